/* The pre-token table in C: GPT-2's pre-tokenizer and a pre-token -> slot hash table in one pass.

   PretokenTable(classes) scans texts with GPT-2's regex
       '(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
   as a hand-written matcher over `classes` (bytes, one per code point 0..0x10FFFF: OTHER, LETTER,
   NUMBER or SPACE, which gpt25.tokenizer.encoder computes by asking the `regex` module, so both agree
   by construction), and maps each pre-token to its slot: the number of distinct pre-tokens seen
   before it. New pre-tokens are appended to a pending list (as str) for Python to merge, so no str
   object is made for a pre-token already in the table.

   Given BPE merges (`merges`: int32 quadruples left id, right id, rank, merged id; `byte_ids`: the
   id of each byte), the table also encodes: a new pre-token is merged here, in C, as it is met
   (lowest-ranked adjacent pair first, leftmost first among equals, with a heap, so long pre-tokens
   cost O(n log n)), and its ids are kept for the next time.

   Methods (the pure-Python fallback, gpt25.tokenizer.encoder.PythonPretokenTable, has the first four):
     scan(parts) -> bytearray of int32 slots: a str part is pre-tokenized, an int part is a slot as is
     slot(unit) -> int: the slot of a whole string (special tokens), added when new
     take_pending() -> list[str]: the pre-tokens added since the last call, in slot order (a table
       with merges keeps none: it merges them itself)
     clear(); len(table) is the number of slots
     encode(parts) -> bytearray of int32 ids: a str part's tokens, an int part is a token id as is. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum { OTHER = 0, LETTER = 1, NUMBER = 2, SPACE = 3 };
#define NUM_CODE_POINTS 0x110000
#define EMPTY (-1)

typedef struct {
    uint64_t hash;
    Py_ssize_t key_start; /* into keys */
    int32_t key_length;
    int32_t slot; /* EMPTY when the entry is free */
} Entry;

typedef struct {
    uint64_t pair; /* left id << 32 | right id */
    int32_t rank;  /* EMPTY when the entry is free */
    int32_t merged;
} Merge;

typedef struct {
    PyObject_HEAD
    PyObject *classes_bytes;
    const uint8_t *classes;
    Entry *entries;
    Py_ssize_t capacity; /* a power of two */
    Py_ssize_t num_slots;
    Py_UCS4 *keys; /* every pre-token's code points, end to end */
    Py_ssize_t keys_used, keys_capacity;
    PyObject *pending; /* list of str */
    /* encoding (when merges were given) */
    Merge *merges;
    Py_ssize_t merges_mask; /* merges has merges_mask + 1 entries, a power of two */
    int32_t byte_ids[256];
    int32_t *ids; /* every slot's token ids, end to end */
    Py_ssize_t ids_used, ids_capacity;
    Py_ssize_t *id_starts; /* per slot: where its ids start in ids */
    int32_t *id_lengths;
    Py_ssize_t slots_capacity;
} Table;

#define INITIAL_CAPACITY 1024

static int allocate_entries(Table *self, Py_ssize_t capacity) {
    Entry *entries = PyMem_Malloc(capacity * sizeof(Entry));
    if (entries == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < capacity; i++) entries[i].slot = EMPTY;
    PyMem_Free(self->entries);
    self->entries = entries;
    self->capacity = capacity;
    return 0;
}

static int grow_entries(Table *self) {
    Entry *old = self->entries;
    Py_ssize_t old_capacity = self->capacity;
    self->entries = NULL;
    if (allocate_entries(self, old_capacity * 2) < 0) {
        self->entries = old;
        return -1;
    }
    Py_ssize_t mask = self->capacity - 1;
    for (Py_ssize_t i = 0; i < old_capacity; i++) {
        if (old[i].slot == EMPTY) continue;
        Py_ssize_t index = (Py_ssize_t)(old[i].hash & mask);
        while (self->entries[index].slot != EMPTY) index = (index + 1) & mask;
        self->entries[index] = old[i];
    }
    PyMem_Free(old);
    return 0;
}

static int reserve_keys(Table *self, Py_ssize_t extra) {
    if (self->keys_used + extra <= self->keys_capacity) return 0;
    Py_ssize_t capacity = self->keys_capacity * 2;
    if (capacity < self->keys_used + extra) capacity = self->keys_used + extra;
    Py_UCS4 *keys = PyMem_Realloc(self->keys, capacity * sizeof(Py_UCS4));
    if (keys == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->keys = keys;
    self->keys_capacity = capacity;
    return 0;
}

static inline __attribute__((always_inline)) Py_UCS4 read_char(int kind, const void *data, Py_ssize_t i) {
    return kind == PyUnicode_1BYTE_KIND   ? ((const Py_UCS1 *)data)[i]
           : kind == PyUnicode_2BYTE_KIND ? ((const Py_UCS2 *)data)[i]
                                          : ((const Py_UCS4 *)data)[i];
}

/* The end of the pre-token that starts at `start` (< length). */
static inline __attribute__((always_inline)) Py_ssize_t pretoken_end(const uint8_t *classes, int kind,
                                                                     const void *data, Py_ssize_t start,
                                                                     Py_ssize_t length) {
    Py_UCS4 first = read_char(kind, data, start);
    if (first == '\'' && start + 1 < length) { /* '(?:[sdmt]|ll|ve|re) */
        Py_UCS4 second = read_char(kind, data, start + 1);
        if (second == 's' || second == 'd' || second == 'm' || second == 't') return start + 2;
        if (start + 2 < length) {
            Py_UCS4 third = read_char(kind, data, start + 2);
            if ((second == 'l' && third == 'l') || (second == 'v' && third == 'e') || (second == 'r' && third == 'e'))
                return start + 3;
        }
    }
    Py_ssize_t run_start = start;
    int kind_of_run = classes[first];
    if (first == ' ' && start + 1 < length) { /* ` ?` before a letter, number or other run */
        int next = classes[read_char(kind, data, start + 1)];
        if (next != SPACE) {
            kind_of_run = next;
            run_start = start + 1;
        }
    }
    Py_ssize_t end = run_start + 1;
    while (end < length && classes[read_char(kind, data, end)] == kind_of_run) end++;
    if (kind_of_run != SPACE || end == length) return end;
    /* \s+(?!\S) gives back the last space before a non-space; a single space is \s+ alone */
    return end - start >= 2 ? end - 1 : end;
}

static inline __attribute__((always_inline)) uint64_t hash_chars(int kind, const void *data, Py_ssize_t start,
                                                                 Py_ssize_t end) {
    uint64_t hash = 0xcbf29ce484222325ULL; /* FNV-1a over code points */
    for (Py_ssize_t i = start; i < end; i++) {
        hash ^= read_char(kind, data, i);
        hash *= 0x100000001b3ULL;
    }
    return hash ^ (hash >> 29);
}


static inline uint64_t mix(uint64_t value) {
    value ^= value >> 33;
    value *= 0xff51afd7ed558ccdULL;
    return value ^ (value >> 33);
}

static const Merge *find_merge(const Table *self, int32_t left, int32_t right) {
    uint64_t pair = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    Py_ssize_t index = (Py_ssize_t)(mix(pair) & self->merges_mask);
    for (;;) {
        const Merge *merge = &self->merges[index];
        if (merge->rank == EMPTY) return NULL;
        if (merge->pair == pair) return merge;
        index = (index + 1) & self->merges_mask;
    }
}

static void heap_push(uint64_t *heap, Py_ssize_t *size, uint64_t value) {
    Py_ssize_t child = (*size)++;
    while (child > 0) {
        Py_ssize_t parent = (child - 1) / 2;
        if (heap[parent] <= value) break;
        heap[child] = heap[parent];
        child = parent;
    }
    heap[child] = value;
}

static uint64_t heap_pop(uint64_t *heap, Py_ssize_t *size) {
    uint64_t top = heap[0], last = heap[--(*size)];
    Py_ssize_t parent = 0;
    for (;;) {
        Py_ssize_t child = 2 * parent + 1;
        if (child >= *size) break;
        if (child + 1 < *size && heap[child + 1] < heap[child]) child++;
        if (heap[child] >= last) break;
        heap[parent] = heap[child];
        parent = child;
    }
    if (*size > 0) heap[parent] = last;
    return top;
}

static void push_pair(const Table *self, const int32_t *symbols, Py_ssize_t left, Py_ssize_t right, uint64_t *heap,
                      Py_ssize_t *heap_size) {
    const Merge *merge = find_merge(self, symbols[left], symbols[right]);
    if (merge != NULL) heap_push(heap, heap_size, (uint64_t)(uint32_t)merge->rank << 32 | (uint64_t)left);
}

/* Merges symbols[0:n] in place (lowest rank first, leftmost first among equals); returns how many remain.
   links holds 2 * n entries, heap 3 * n. */
static Py_ssize_t merge_symbols(const Table *self, int32_t *symbols, Py_ssize_t n, Py_ssize_t *links, uint64_t *heap) {
    Py_ssize_t *next = links, *previous = links + n;
    Py_ssize_t heap_size = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        next[i] = i + 1 < n ? i + 1 : -1;
        previous[i] = i - 1;
    }
    for (Py_ssize_t i = 0; i + 1 < n; i++) push_pair(self, symbols, i, i + 1, heap, &heap_size);
    while (heap_size > 0) {
        uint64_t top = heap_pop(heap, &heap_size);
        Py_ssize_t left = (Py_ssize_t)(top & 0xffffffffu);
        Py_ssize_t right = next[left];
        if (symbols[left] == EMPTY || right < 0) continue;
        const Merge *merge = find_merge(self, symbols[left], symbols[right]);
        if (merge == NULL || (uint64_t)(uint32_t)merge->rank != top >> 32) continue; /* stale: the pair changed */
        symbols[left] = merge->merged;
        symbols[right] = EMPTY;
        next[left] = next[right];
        if (next[right] >= 0) previous[next[right]] = left;
        if (previous[left] >= 0) push_pair(self, symbols, previous[left], left, heap, &heap_size);
        if (next[left] >= 0) push_pair(self, symbols, left, next[left], heap, &heap_size);
    }
    Py_ssize_t count = 0;
    for (Py_ssize_t i = 0; i >= 0; i = next[i]) symbols[count++] = symbols[i];
    return count;
}

static int reserve_ids(Table *self, Py_ssize_t extra) {
    if (self->num_slots + 1 > self->slots_capacity) {
        Py_ssize_t capacity = self->slots_capacity ? self->slots_capacity * 2 : INITIAL_CAPACITY;
        Py_ssize_t *starts = PyMem_Realloc(self->id_starts, capacity * sizeof(Py_ssize_t));
        if (starts == NULL) return (PyErr_NoMemory(), -1);
        self->id_starts = starts;
        int32_t *lengths = PyMem_Realloc(self->id_lengths, capacity * sizeof(int32_t));
        if (lengths == NULL) return (PyErr_NoMemory(), -1);
        self->id_lengths = lengths;
        self->slots_capacity = capacity;
    }
    if (self->ids_used + extra > self->ids_capacity) {
        Py_ssize_t capacity = self->ids_capacity * 2 > self->ids_used + extra ? self->ids_capacity * 2 : self->ids_used + extra;
        int32_t *ids = PyMem_Realloc(self->ids, capacity * sizeof(int32_t));
        if (ids == NULL) return (PyErr_NoMemory(), -1);
        self->ids = ids;
        self->ids_capacity = capacity;
    }
    return 0;
}

#define SMALL_WORD 64

/* Stores the token ids of text[start:end] as the ids of slot self->num_slots (not yet counted). */
static int encode_new_pretoken(Table *self, PyObject *text, int kind, const void *data, Py_ssize_t start,
                               Py_ssize_t end) {
    Py_ssize_t max_bytes = 4 * (end - start);
    if (reserve_ids(self, max_bytes) < 0) return -1;
    int32_t *symbols = self->ids + self->ids_used; /* bytes first, merged in place */
    Py_ssize_t n = 0;
    for (Py_ssize_t i = start; i < end; i++) {
        Py_UCS4 c = read_char(kind, data, i);
        if (c < 0x80) {
            symbols[n++] = self->byte_ids[c];
        } else if (c < 0x800) {
            symbols[n++] = self->byte_ids[0xC0 | (c >> 6)];
            symbols[n++] = self->byte_ids[0x80 | (c & 0x3F)];
        } else if (c < 0x10000) {
            if (c >= 0xD800 && c <= 0xDFFF) { /* a lone surrogate: raise what str.encode raises */
                PyObject *piece = PyUnicode_Substring(text, start, end);
                PyObject *encoded = piece == NULL ? NULL : PyUnicode_AsUTF8String(piece);
                Py_XDECREF(piece);
                Py_XDECREF(encoded);
                if (!PyErr_Occurred()) PyErr_SetString(PyExc_UnicodeEncodeError, "surrogates not allowed");
                return -1;
            }
            symbols[n++] = self->byte_ids[0xE0 | (c >> 12)];
            symbols[n++] = self->byte_ids[0x80 | ((c >> 6) & 0x3F)];
            symbols[n++] = self->byte_ids[0x80 | (c & 0x3F)];
        } else {
            symbols[n++] = self->byte_ids[0xF0 | (c >> 18)];
            symbols[n++] = self->byte_ids[0x80 | ((c >> 12) & 0x3F)];
            symbols[n++] = self->byte_ids[0x80 | ((c >> 6) & 0x3F)];
            symbols[n++] = self->byte_ids[0x80 | (c & 0x3F)];
        }
    }
    if (n > 1) {
        Py_ssize_t small_links[2 * SMALL_WORD];
        uint64_t small_heap[3 * SMALL_WORD];
        Py_ssize_t *links = n <= SMALL_WORD ? small_links : PyMem_Malloc(2 * n * sizeof(Py_ssize_t));
        uint64_t *heap = n <= SMALL_WORD ? small_heap : PyMem_Malloc(3 * n * sizeof(uint64_t));
        if (links == NULL || heap == NULL) {
            if (n > SMALL_WORD) {
                PyMem_Free(links);
                PyMem_Free(heap);
            }
            PyErr_NoMemory();
            return -1;
        }
        n = merge_symbols(self, symbols, n, links, heap);
        if (links != small_links) PyMem_Free(links);
        if (heap != small_heap) PyMem_Free(heap);
    }
    self->id_starts[self->num_slots] = self->ids_used;
    self->id_lengths[self->num_slots] = (int32_t)n;
    self->ids_used += n;
    return 0;
}

/* The slot of text[start:end], inserted (and made pending, or encoded when the table has merges) when new;
   -1 with an exception set on failure. */
static inline __attribute__((always_inline)) int32_t lookup(Table *self, PyObject *text, int kind,
                                                            const void *data, Py_ssize_t start, Py_ssize_t end) {
    uint64_t hash = hash_chars(kind, data, start, end);
    Py_ssize_t key_length = end - start;
    Py_ssize_t mask = self->capacity - 1;
    Py_ssize_t index = (Py_ssize_t)(hash & mask);
    for (;;) {
        Entry *entry = &self->entries[index];
        if (entry->slot == EMPTY) break;
        if (entry->hash == hash && entry->key_length == key_length) {
            const Py_UCS4 *key = self->keys + entry->key_start;
            Py_ssize_t i = 0;
            while (i < key_length && key[i] == read_char(kind, data, start + i)) i++;
            if (i == key_length) return entry->slot;
        }
        index = (index + 1) & mask;
    }
    if (self->num_slots >= INT32_MAX || reserve_keys(self, key_length) < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_OverflowError, "pre-token table full");
        return -1;
    }
    if ((self->num_slots + 1) * 2 > self->capacity) { /* grow first: the table never fills up */
        if (grow_entries(self) < 0) return -1;
        mask = self->capacity - 1;
        index = (Py_ssize_t)(hash & mask);
        while (self->entries[index].slot != EMPTY) index = (index + 1) & mask;
    }
    if (self->merges != NULL) {
        if (encode_new_pretoken(self, text, kind, data, start, end) < 0) return -1;
    } else {
        PyObject *pretoken = PyUnicode_Substring(text, start, end);
        if (pretoken == NULL || PyList_Append(self->pending, pretoken) < 0) {
            Py_XDECREF(pretoken);
            return -1;
        }
        Py_DECREF(pretoken);
    }
    for (Py_ssize_t i = 0; i < key_length; i++) self->keys[self->keys_used + i] = read_char(kind, data, start + i);
    Entry *entry = &self->entries[index];
    entry->hash = hash;
    entry->key_start = self->keys_used;
    entry->key_length = (int32_t)key_length;
    entry->slot = (int32_t)self->num_slots;
    self->keys_used += key_length;
    self->num_slots++;
    return (int32_t)(self->num_slots - 1);
}

/* Writes to out the slot of each of text's pre-tokens (encoding = 0) or their token ids (encoding = 1,
   a table with merges); returns how many values, or -1 with an exception set. */
static inline __attribute__((always_inline)) Py_ssize_t run_kind(Table *self, PyObject *text, int kind,
                                                                 const void *data, Py_ssize_t length, int32_t *out,
                                                                 int encoding) {
    Py_ssize_t count = 0;
    Py_ssize_t start = 0;
    while (start < length) {
        Py_ssize_t end = pretoken_end(self->classes, kind, data, start, length);
        int32_t slot = lookup(self, text, kind, data, start, end);
        if (slot < 0) return -1;
        start = end;
        if (!encoding) {
            out[count++] = slot;
            continue;
        }
        const int32_t *ids = self->ids + self->id_starts[slot];
        int32_t num_ids = self->id_lengths[slot];
        if (num_ids == 1) {
            out[count++] = ids[0];
        } else {
            memcpy(out + count, ids, num_ids * sizeof(int32_t));
            count += num_ids;
        }
    }
    return count;
}

/* run_kind, compiled for each string kind and mode. */
static Py_ssize_t run_text(Table *self, PyObject *text, int32_t *out, int encoding) {
    Py_ssize_t length = PyUnicode_GET_LENGTH(text);
    const void *data = PyUnicode_DATA(text);
    switch (PyUnicode_KIND(text)) {
        case PyUnicode_1BYTE_KIND:
            return encoding ? run_kind(self, text, PyUnicode_1BYTE_KIND, data, length, out, 1)
                            : run_kind(self, text, PyUnicode_1BYTE_KIND, data, length, out, 0);
        case PyUnicode_2BYTE_KIND:
            return encoding ? run_kind(self, text, PyUnicode_2BYTE_KIND, data, length, out, 1)
                            : run_kind(self, text, PyUnicode_2BYTE_KIND, data, length, out, 0);
        default:
            return encoding ? run_kind(self, text, PyUnicode_4BYTE_KIND, data, length, out, 1)
                            : run_kind(self, text, PyUnicode_4BYTE_KIND, data, length, out, 0);
    }
}

/* The most int32 values `parts` can give: per str part, one per pre-token (scan) or per UTF-8 byte (encode). */
static Py_ssize_t output_bound(PyObject *parts, const char *method, int encoding) {
    if (!PyList_Check(parts)) {
        PyErr_Format(PyExc_TypeError, "%s() takes a list of str and int", method);
        return -1;
    }
    Py_ssize_t bound = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(parts); i++) {
        PyObject *part = PyList_GET_ITEM(parts, i);
        if (PyUnicode_Check(part)) {
            if (PyUnicode_READY(part) < 0) return -1;
            int kind = PyUnicode_KIND(part);
            Py_ssize_t per_char = !encoding ? 1 : kind == PyUnicode_1BYTE_KIND ? 2 : kind == PyUnicode_2BYTE_KIND ? 3 : 4;
            bound += per_char * PyUnicode_GET_LENGTH(part);
        } else if (PyLong_Check(part)) {
            bound += 1;
        } else {
            PyErr_Format(PyExc_TypeError, "%s() parts must be str or int, not %.100s", method, Py_TYPE(part)->tp_name);
            return -1;
        }
    }
    return bound;
}

/* scan (encoding = 0) or encode (encoding = 1) every part into one bytearray of int32. */
static PyObject *run_parts(Table *self, PyObject *parts, int encoding) {
    const char *method = encoding ? "encode" : "scan";
    if (encoding && self->merges == NULL) {
        PyErr_SetString(PyExc_ValueError, "encode() needs a table made with merges and byte_ids");
        return NULL;
    }
    Py_ssize_t bound = output_bound(parts, method, encoding);
    if (bound < 0) return NULL;
    PyObject *result = PyByteArray_FromStringAndSize(NULL, bound * (Py_ssize_t)sizeof(int32_t));
    if (result == NULL) return NULL;
    int32_t *out = (int32_t *)PyByteArray_AS_STRING(result);
    Py_ssize_t count = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(parts); i++) {
        PyObject *part = PyList_GET_ITEM(parts, i);
        if (PyLong_Check(part)) {
            long value = PyLong_AsLong(part);
            long limit = encoding ? INT32_MAX : (long)self->num_slots;
            if (value < 0 || value >= limit) {
                if (!PyErr_Occurred())
                    PyErr_Format(PyExc_ValueError, encoding ? "token id %ld is out of range" : "slot %ld is not in the table", value);
                Py_DECREF(result);
                return NULL;
            }
            out[count++] = (int32_t)value;
            continue;
        }
        Py_ssize_t written = run_text(self, part, out + count, encoding);
        if (written < 0) {
            Py_DECREF(result);
            return NULL;
        }
        count += written;
    }
    if (PyByteArray_Resize(result, count * (Py_ssize_t)sizeof(int32_t)) < 0) {
        Py_DECREF(result);
        return NULL;
    }
    return result;
}

static PyObject *Table_scan(Table *self, PyObject *parts) { return run_parts(self, parts, 0); }

static PyObject *Table_encode(Table *self, PyObject *parts) { return run_parts(self, parts, 1); }

static PyObject *Table_slot(Table *self, PyObject *unit) {
    if (!PyUnicode_Check(unit) || PyUnicode_READY(unit) < 0 || PyUnicode_GET_LENGTH(unit) == 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "slot() takes a non-empty str");
        return NULL;
    }
    int32_t slot = lookup(self, unit, PyUnicode_KIND(unit), PyUnicode_DATA(unit), 0, PyUnicode_GET_LENGTH(unit));
    return slot < 0 ? NULL : PyLong_FromLong(slot);
}

static PyObject *Table_take_pending(Table *self, PyObject *Py_UNUSED(ignored)) {
    PyObject *fresh = PyList_New(0);
    if (fresh == NULL) return NULL;
    PyObject *pending = self->pending;
    self->pending = fresh;
    return pending;
}

static int reset(Table *self) {
    if (allocate_entries(self, INITIAL_CAPACITY) < 0) return -1;
    PyObject *fresh = PyList_New(0);
    if (fresh == NULL) return -1;
    Py_XSETREF(self->pending, fresh);
    self->num_slots = 0;
    self->keys_used = 0;
    self->ids_used = 0;
    return 0;
}

/* Builds the merge hash table from int32 quadruples (left, right, rank, merged); a pair's first entry wins. */
static int set_merges(Table *self, PyObject *merges, PyObject *byte_ids) {
    if (PyBytes_GET_SIZE(byte_ids) != 256 * (Py_ssize_t)sizeof(int32_t) || PyBytes_GET_SIZE(merges) % (4 * sizeof(int32_t))) {
        PyErr_SetString(PyExc_ValueError, "byte_ids must hold 256 int32 and merges int32 quadruples");
        return -1;
    }
    memcpy(self->byte_ids, PyBytes_AS_STRING(byte_ids), sizeof(self->byte_ids));
    Py_ssize_t num_merges = PyBytes_GET_SIZE(merges) / (4 * sizeof(int32_t));
    Py_ssize_t capacity = 16;
    while (capacity < 2 * num_merges) capacity *= 2;
    Merge *table = PyMem_Malloc(capacity * sizeof(Merge));
    if (table == NULL) return (PyErr_NoMemory(), -1);
    for (Py_ssize_t i = 0; i < capacity; i++) table[i].rank = EMPTY;
    const int32_t *quadruples = (const int32_t *)PyBytes_AS_STRING(merges);
    for (Py_ssize_t m = 0; m < num_merges; m++) {
        const int32_t *merge = quadruples + 4 * m;
        if (merge[0] < 0 || merge[1] < 0 || merge[2] < 0 || merge[3] < 0) {
            PyMem_Free(table);
            PyErr_Format(PyExc_ValueError, "merge %zd has a negative id or rank", m);
            return -1;
        }
        uint64_t pair = (uint64_t)(uint32_t)merge[0] << 32 | (uint32_t)merge[1];
        Py_ssize_t index = (Py_ssize_t)(mix(pair) & (capacity - 1));
        while (table[index].rank != EMPTY && table[index].pair != pair) index = (index + 1) & (capacity - 1);
        if (table[index].rank == EMPTY) table[index] = (Merge){pair, merge[2], merge[3]};
    }
    PyMem_Free(self->merges);
    self->merges = table;
    self->merges_mask = capacity - 1;
    return 0;
}

static PyObject *Table_clear(Table *self, PyObject *Py_UNUSED(ignored)) {
    if (reset(self) < 0) return NULL;
    Py_RETURN_NONE;
}

static Py_ssize_t Table_length(Table *self) { return self->num_slots; }

static int Table_init(Table *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"classes", "merges", "byte_ids", NULL};
    PyObject *classes, *merges = NULL, *byte_ids = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "S|SS", keywords, &classes, &merges, &byte_ids)) return -1;
    if ((merges == NULL) != (byte_ids == NULL)) {
        PyErr_SetString(PyExc_TypeError, "give both merges and byte_ids, or neither");
        return -1;
    }
    if (merges != NULL && set_merges(self, merges, byte_ids) < 0) return -1;
    if (PyBytes_GET_SIZE(classes) != NUM_CODE_POINTS) {
        PyErr_Format(PyExc_ValueError, "classes must hold one byte per code point (%d), got %zd", NUM_CODE_POINTS,
                     PyBytes_GET_SIZE(classes));
        return -1;
    }
    const uint8_t *values = (const uint8_t *)PyBytes_AS_STRING(classes);
    for (Py_ssize_t i = 0; i < NUM_CODE_POINTS; i++) {
        if (values[i] > SPACE) {
            PyErr_Format(PyExc_ValueError, "classes[%zd] is %d; classes are 0 (other) to 3 (space)", i, values[i]);
            return -1;
        }
    }
    Py_INCREF(classes);
    Py_XSETREF(self->classes_bytes, classes);
    self->classes = values;
    return reset(self);
}

static void Table_dealloc(Table *self) {
    Py_XDECREF(self->classes_bytes);
    Py_XDECREF(self->pending);
    PyMem_Free(self->entries);
    PyMem_Free(self->keys);
    PyMem_Free(self->merges);
    PyMem_Free(self->ids);
    PyMem_Free(self->id_starts);
    PyMem_Free(self->id_lengths);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Table_methods[] = {
    {"scan", (PyCFunction)Table_scan, METH_O, "scan(parts) -> bytearray of int32 slots (str parts pre-tokenized, int parts as is)"},
    {"encode", (PyCFunction)Table_encode, METH_O, "encode(parts) -> bytearray of int32 token ids (str parts encoded, int parts as is)"},
    {"slot", (PyCFunction)Table_slot, METH_O, "slot(unit) -> the slot of the whole string, added when new"},
    {"take_pending", (PyCFunction)Table_take_pending, METH_NOARGS, "the pre-tokens added since the last call, in slot order"},
    {"clear", (PyCFunction)Table_clear, METH_NOARGS, "forget every pre-token"},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods Table_as_sequence = {.sq_length = (lenfunc)Table_length};

static PyTypeObject TableType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gpt25.tokenizer._pretokens.PretokenTable",
    .tp_doc = PyDoc_STR("GPT-2 pre-tokenizer with a pre-token -> slot table (see the module's C source)"),
    .tp_basicsize = sizeof(Table),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Table_init,
    .tp_dealloc = (destructor)Table_dealloc,
    .tp_methods = Table_methods,
    .tp_as_sequence = &Table_as_sequence,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "gpt25.tokenizer._pretokens",
    .m_doc = "GPT-2 pre-tokenization and pre-token lookup in C (optional; gpt25.tokenizer.encoder falls back to Python)",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__pretokens(void) {
    if (PyType_Ready(&TableType) < 0) return NULL;
    PyObject *result = PyModule_Create(&module);
    if (result == NULL) return NULL;
    Py_INCREF(&TableType);
    if (PyModule_AddObject(result, "PretokenTable", (PyObject *)&TableType) < 0) {
        Py_DECREF(&TableType);
        Py_DECREF(result);
        return NULL;
    }
    return result;
}
