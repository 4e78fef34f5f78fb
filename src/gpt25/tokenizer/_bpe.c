/* BPE training's merge loop in C: the same algorithm and the same merges as the pure-Python
   gpt25.tokenizer.train._BpeMerger, which runs where this extension is not built.

   merge_pairs(symbols, lengths, counts, tokens, vocab_size, progress) -> list of (left id, right id)
     symbols: int32 buffer, every word's token ids end to end (bytes 0..255 before any merge)
     lengths: int64 buffer, each word's length; counts: int64 buffer, each word's count
     tokens: list of bytes, the vocabulary so far (ids 0..len-1); merged tokens get the next ids
     vocab_size: stop when the vocabulary has this many tokens (or no pair is left)
     progress: None, or a callable given the number of merges done every PROGRESS_EVERY merges

   Every adjacent pair has a total count and the list of words it occurs in (one entry per
   occurrence; entries go stale as words change and are skipped). A max-heap holds (count, pair)
   entries, fixed lazily: an entry whose count is out of date is pushed again with the current one.
   The best pair has the highest count; ties go to the greatest (bytes(left), bytes(right)) as
   Python compares them, then to the smallest (left id, right id). A merge rewrites only the words
   in its pair's list, and every pair it creates contains the new token, so it is new. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define PROGRESS_EVERY 512

typedef struct {
    int32_t *items;
    Py_ssize_t length, capacity;
} IntList;

typedef struct {
    int64_t count;
    int32_t pair;
} HeapEntry;

typedef struct {
    /* tokens: bytes end to end */
    uint8_t *token_bytes;
    Py_ssize_t bytes_used, bytes_capacity;
    Py_ssize_t *token_start;
    Py_ssize_t *token_length;
    Py_ssize_t num_tokens, tokens_capacity;
    /* words */
    int32_t *symbols;
    Py_ssize_t *word_start;
    Py_ssize_t *word_length;
    int64_t *word_count;
    Py_ssize_t num_words;
    /* pairs */
    int32_t *pair_left, *pair_right;
    int64_t *pair_count;
    IntList *pair_words;
    Py_ssize_t num_pairs, pairs_capacity;
    /* pair (left << 32 | right) -> pair index, open addressing */
    uint64_t *map_keys;
    int32_t *map_values; /* -1 when free */
    Py_ssize_t map_mask, map_used;
    /* lazy max-heap */
    HeapEntry *heap;
    Py_ssize_t heap_length, heap_capacity;
} Merger;

static int grow(void **array, Py_ssize_t *capacity, Py_ssize_t needed, size_t item_size) {
    if (needed <= *capacity) return 0;
    Py_ssize_t new_capacity = *capacity ? *capacity : 16;
    while (new_capacity < needed) new_capacity *= 2;
    void *grown = PyMem_Realloc(*array, (size_t)new_capacity * item_size);
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *array = grown;
    *capacity = new_capacity;
    return 0;
}

static int list_append(IntList *list, int32_t value) {
    if (grow((void **)&list->items, &list->capacity, list->length + 1, sizeof(int32_t)) < 0) return -1;
    list->items[list->length++] = value;
    return 0;
}

static inline uint64_t pair_key(int32_t left, int32_t right) { return (uint64_t)(uint32_t)left << 32 | (uint32_t)right; }

static inline Py_ssize_t map_slot(uint64_t key, Py_ssize_t mask) {
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdULL;
    key ^= key >> 33;
    return (Py_ssize_t)(key & (uint64_t)mask);
}

static int map_resize(Merger *m, Py_ssize_t capacity) {
    uint64_t *keys = PyMem_Malloc((size_t)capacity * sizeof(uint64_t));
    int32_t *values = PyMem_Malloc((size_t)capacity * sizeof(int32_t));
    if (keys == NULL || values == NULL) {
        PyMem_Free(keys);
        PyMem_Free(values);
        PyErr_NoMemory();
        return -1;
    }
    memset(values, 0xff, (size_t)capacity * sizeof(int32_t));
    Py_ssize_t mask = capacity - 1;
    for (Py_ssize_t i = 0; m->map_values != NULL && i <= m->map_mask; i++) {
        if (m->map_values[i] < 0) continue;
        Py_ssize_t slot = map_slot(m->map_keys[i], mask);
        while (values[slot] >= 0) slot = (slot + 1) & mask;
        keys[slot] = m->map_keys[i];
        values[slot] = m->map_values[i];
    }
    PyMem_Free(m->map_keys);
    PyMem_Free(m->map_values);
    m->map_keys = keys;
    m->map_values = values;
    m->map_mask = mask;
    return 0;
}

/* The index of pair (left, right), added with count 0 when new (then *added is set); -1 on error. */
static int32_t pair_index(Merger *m, int32_t left, int32_t right, int *added) {
    uint64_t key = pair_key(left, right);
    Py_ssize_t slot = map_slot(key, m->map_mask);
    while (m->map_values[slot] >= 0) {
        if (m->map_keys[slot] == key) return m->map_values[slot];
        slot = (slot + 1) & m->map_mask;
    }
    if (m->num_pairs >= INT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "too many distinct pairs");
        return -1;
    }
    Py_ssize_t needed = m->num_pairs + 1, capacity = m->pairs_capacity;
    if (grow((void **)&m->pair_left, &capacity, needed, sizeof(int32_t)) < 0) return -1;
    capacity = m->pairs_capacity;
    if (grow((void **)&m->pair_right, &capacity, needed, sizeof(int32_t)) < 0) return -1;
    capacity = m->pairs_capacity;
    if (grow((void **)&m->pair_count, &capacity, needed, sizeof(int64_t)) < 0) return -1;
    capacity = m->pairs_capacity;
    if (grow((void **)&m->pair_words, &capacity, needed, sizeof(IntList)) < 0) return -1;
    m->pairs_capacity = capacity;
    int32_t index = (int32_t)m->num_pairs++;
    m->pair_left[index] = left;
    m->pair_right[index] = right;
    m->pair_count[index] = 0;
    m->pair_words[index] = (IntList){NULL, 0, 0};
    m->map_keys[slot] = key;
    m->map_values[slot] = index;
    *added = 1;
    if (++m->map_used * 2 > m->map_mask + 1 && map_resize(m, (m->map_mask + 1) * 2) < 0) return -1;
    return index;
}

/* Python's bytes comparison of tokens a and b: <0, 0 or >0. */
static int compare_tokens(const Merger *m, int32_t a, int32_t b) {
    Py_ssize_t length_a = m->token_length[a], length_b = m->token_length[b];
    int order = memcmp(m->token_bytes + m->token_start[a], m->token_bytes + m->token_start[b],
                       (size_t)(length_a < length_b ? length_a : length_b));
    if (order != 0) return order;
    return (length_a > length_b) - (length_a < length_b);
}

/* Whether heap entry x should come out before y. */
static int better(const Merger *m, HeapEntry x, HeapEntry y) {
    if (x.count != y.count) return x.count > y.count;
    int32_t xl = m->pair_left[x.pair], xr = m->pair_right[x.pair];
    int32_t yl = m->pair_left[y.pair], yr = m->pair_right[y.pair];
    int order = compare_tokens(m, xl, yl);
    if (order == 0) order = compare_tokens(m, xr, yr);
    if (order != 0) return order > 0;
    return xl != yl ? xl < yl : xr < yr;
}

static int heap_push(Merger *m, int64_t count, int32_t pair) {
    if (grow((void **)&m->heap, &m->heap_capacity, m->heap_length + 1, sizeof(HeapEntry)) < 0) return -1;
    HeapEntry entry = {count, pair};
    Py_ssize_t child = m->heap_length++;
    while (child > 0) {
        Py_ssize_t parent = (child - 1) / 2;
        if (!better(m, entry, m->heap[parent])) break;
        m->heap[child] = m->heap[parent];
        child = parent;
    }
    m->heap[child] = entry;
    return 0;
}

static HeapEntry heap_pop(Merger *m) {
    HeapEntry top = m->heap[0], last = m->heap[--m->heap_length];
    Py_ssize_t parent = 0, length = m->heap_length;
    for (;;) {
        Py_ssize_t child = 2 * parent + 1;
        if (child >= length) break;
        if (child + 1 < length && better(m, m->heap[child + 1], m->heap[child])) child++;
        if (!better(m, m->heap[child], last)) break;
        m->heap[parent] = m->heap[child];
        parent = child;
    }
    if (length > 0) m->heap[parent] = last;
    return top;
}

/* The best pair with an up-to-date count, or -1 when none is left (-2 on error). */
static int32_t pop_best_pair(Merger *m) {
    while (m->heap_length > 0) {
        HeapEntry entry = heap_pop(m);
        int64_t current = m->pair_count[entry.pair];
        if (current == entry.count) return entry.pair;
        if (current > 0 && current < entry.count && heap_push(m, current, entry.pair) < 0) return -2;
    }
    return -1;
}

/* Add `count` occurrences of (left, right) in word `word`; a new pair is appended to `created`. */
static int add_pair(Merger *m, int32_t left, int32_t right, int64_t count, int32_t word, IntList *created) {
    int added = 0;
    int32_t index = pair_index(m, left, right, &added);
    if (index < 0) return -1;
    if (added && created != NULL && list_append(created, index) < 0) return -1;
    m->pair_count[index] += count;
    return list_append(&m->pair_words[index], word);
}

static int subtract_pair(Merger *m, int32_t left, int32_t right, int64_t count) {
    int added = 0;
    int32_t index = pair_index(m, left, right, &added);
    if (index < 0) return -1;
    m->pair_count[index] -= count;
    return 0;
}

static int reserve_tokens(Merger *m, Py_ssize_t needed) {
    Py_ssize_t capacity = m->tokens_capacity;
    if (grow((void **)&m->token_start, &capacity, needed, sizeof(Py_ssize_t)) < 0) return -1;
    capacity = m->tokens_capacity;
    if (grow((void **)&m->token_length, &capacity, needed, sizeof(Py_ssize_t)) < 0) return -1;
    m->tokens_capacity = capacity;
    return 0;
}

static int add_token(Merger *m, int32_t left, int32_t right) {
    Py_ssize_t length = m->token_length[left] + m->token_length[right];
    if (grow((void **)&m->token_bytes, &m->bytes_capacity, m->bytes_used + length, 1) < 0) return -1;
    if (reserve_tokens(m, m->num_tokens + 1) < 0) return -1;
    uint8_t *out = m->token_bytes + m->bytes_used;
    memcpy(out, m->token_bytes + m->token_start[left], (size_t)m->token_length[left]);
    memcpy(out + m->token_length[left], m->token_bytes + m->token_start[right], (size_t)m->token_length[right]);
    m->token_start[m->num_tokens] = m->bytes_used;
    m->token_length[m->num_tokens] = length;
    m->bytes_used += length;
    m->num_tokens++;
    return 0;
}

/* Merge every occurrence of pair `pair` into a new token, updating the neighbouring pairs' counts. */
static int merge(Merger *m, int32_t pair) {
    int32_t a = m->pair_left[pair], b = m->pair_right[pair];
    int32_t merged = (int32_t)m->num_tokens;
    if (add_token(m, a, b) < 0) return -1;
    IntList words = m->pair_words[pair], created = {NULL, 0, 0};
    m->pair_words[pair] = (IntList){NULL, 0, 0};
    int status = 0;
    for (Py_ssize_t w = 0; w < words.length && status == 0; w++) {
        int32_t word = words.items[w];
        int32_t *s = m->symbols + m->word_start[word];
        Py_ssize_t n = m->word_length[word], last = n - 1, previous_end = -1, write = 0;
        int64_t count = m->word_count[word];
        Py_ssize_t position = 0;
        while (position < last && !(s[position] == a && s[position + 1] == b)) position++;
        if (position >= last) continue; /* merged already, or lost the pair to an earlier merge */
        Py_ssize_t read = 0;
        while (position < last && status == 0) {
            Py_ssize_t next = position + 2;
            while (next < last && !(s[next] == a && s[next + 1] == b)) next++;
            if (next >= last) next = -1;
            if (position > 0) {
                int32_t before = s[position - 1];
                status |= subtract_pair(m, before, a, count);
                status |= add_pair(m, position == previous_end ? merged : before, merged, count, word, &created);
            }
            previous_end = position + 2;
            if (position + 2 <= last && next != previous_end) {
                int32_t after = s[position + 2];
                status |= subtract_pair(m, b, after, count);
                status |= add_pair(m, merged, after, count, word, &created);
            }
            while (read < position) s[write++] = s[read++];
            s[write++] = merged;
            read = position + 2;
            position = next < 0 ? last : next;
        }
        while (read < n) s[write++] = s[read++];
        m->word_length[word] = write;
    }
    PyMem_Free(words.items);
    m->pair_count[pair] = 0;
    for (Py_ssize_t i = 0; i < created.length && status == 0; i++)
        status = heap_push(m, m->pair_count[created.items[i]], created.items[i]);
    PyMem_Free(created.items);
    return status < 0 ? -1 : 0;
}

static void merger_free(Merger *m) {
    for (Py_ssize_t i = 0; i < m->num_pairs; i++) PyMem_Free(m->pair_words[i].items);
    void *arrays[] = {m->token_bytes, m->token_start, m->token_length, m->symbols, m->word_start, m->word_length,
                      m->word_count, m->pair_left, m->pair_right, m->pair_count, m->pair_words, m->map_keys,
                      m->map_values, m->heap};
    for (size_t i = 0; i < sizeof(arrays) / sizeof(arrays[0]); i++) PyMem_Free(arrays[i]);
}

static int load_tokens(Merger *m, PyObject *tokens) {
    Py_ssize_t count = PyList_GET_SIZE(tokens);
    if (reserve_tokens(m, count + 1) < 0) return -1;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *token = PyList_GET_ITEM(tokens, i);
        if (!PyBytes_Check(token)) {
            PyErr_SetString(PyExc_TypeError, "tokens must be a list of bytes");
            return -1;
        }
        Py_ssize_t length = PyBytes_GET_SIZE(token);
        if (grow((void **)&m->token_bytes, &m->bytes_capacity, m->bytes_used + length, 1) < 0) return -1;
        memcpy(m->token_bytes + m->bytes_used, PyBytes_AS_STRING(token), (size_t)length);
        m->token_start[i] = m->bytes_used;
        m->token_length[i] = length;
        m->bytes_used += length;
    }
    m->num_tokens = count;
    return 0;
}

/* Copies the words and indexes every adjacent pair. */
static int load_words(Merger *m, Py_buffer *symbols, Py_buffer *lengths, Py_buffer *counts) {
    if (symbols->len % 4 || lengths->len % 8 || counts->len != lengths->len) {
        PyErr_SetString(PyExc_ValueError, "symbols must be int32, lengths and counts int64 of one length each");
        return -1;
    }
    Py_ssize_t num_words = lengths->len / 8, num_symbols = symbols->len / 4, total = 0;
    if (num_words >= INT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "too many words");
        return -1;
    }
    m->symbols = PyMem_Malloc((size_t)(num_symbols ? num_symbols : 1) * sizeof(int32_t));
    m->word_start = PyMem_Malloc((size_t)(num_words ? num_words : 1) * sizeof(Py_ssize_t));
    m->word_length = PyMem_Malloc((size_t)(num_words ? num_words : 1) * sizeof(Py_ssize_t));
    m->word_count = PyMem_Malloc((size_t)(num_words ? num_words : 1) * sizeof(int64_t));
    if (!m->symbols || !m->word_start || !m->word_length || !m->word_count) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(m->symbols, symbols->buf, (size_t)symbols->len);
    memcpy(m->word_count, counts->buf, (size_t)counts->len);
    const int64_t *word_lengths = lengths->buf;
    for (Py_ssize_t word = 0; word < num_words; word++) {
        if (word_lengths[word] < 0 || total + word_lengths[word] > num_symbols) {
            PyErr_SetString(PyExc_ValueError, "the word lengths do not add up to the symbols given");
            return -1;
        }
        m->word_start[word] = total;
        m->word_length[word] = (Py_ssize_t)word_lengths[word];
        total += word_lengths[word];
    }
    if (total != num_symbols) {
        PyErr_SetString(PyExc_ValueError, "the word lengths do not add up to the symbols given");
        return -1;
    }
    m->num_words = num_words;
    for (Py_ssize_t i = 0; i < num_symbols; i++) {
        if (m->symbols[i] < 0 || m->symbols[i] >= m->num_tokens) {
            PyErr_Format(PyExc_ValueError, "symbol %d is not a token id below %zd", m->symbols[i], m->num_tokens);
            return -1;
        }
    }
    if (map_resize(m, 1 << 16) < 0) return -1;
    for (Py_ssize_t word = 0; word < num_words; word++) {
        const int32_t *s = m->symbols + m->word_start[word];
        for (Py_ssize_t i = 0; i + 1 < m->word_length[word]; i++)
            if (add_pair(m, s[i], s[i + 1], m->word_count[word], (int32_t)word, NULL) < 0) return -1;
    }
    for (int32_t pair = 0; pair < m->num_pairs; pair++)
        if (m->pair_count[pair] > 0 && heap_push(m, m->pair_count[pair], pair) < 0) return -1;
    return 0;
}

static PyObject *run(Merger *m, Py_ssize_t vocab_size, PyObject *progress) {
    PyObject *merges = PyList_New(0);
    if (merges == NULL) return NULL;
    while (m->num_tokens < vocab_size) {
        int32_t pair = pop_best_pair(m);
        if (pair == -2) goto error;
        if (pair < 0) break;
        PyObject *item = Py_BuildValue("(ii)", m->pair_left[pair], m->pair_right[pair]);
        if (item == NULL || PyList_Append(merges, item) < 0) {
            Py_XDECREF(item);
            goto error;
        }
        Py_DECREF(item);
        if (merge(m, pair) < 0) goto error;
        if (PyList_GET_SIZE(merges) % PROGRESS_EVERY == 0) {
            if (PyErr_CheckSignals() < 0) goto error;
            if (progress != Py_None) {
                PyObject *result = PyObject_CallFunction(progress, "n", PyList_GET_SIZE(merges));
                if (result == NULL) goto error;
                Py_DECREF(result);
            }
        }
    }
    return merges;
error:
    Py_DECREF(merges);
    return NULL;
}

static PyObject *merge_pairs(PyObject *Py_UNUSED(module), PyObject *args) {
    Py_buffer symbols, lengths, counts;
    PyObject *tokens, *progress;
    Py_ssize_t vocab_size;
    if (!PyArg_ParseTuple(args, "y*y*y*O!nO", &symbols, &lengths, &counts, &PyList_Type, &tokens, &vocab_size,
                          &progress))
        return NULL;
    Merger m = {0};
    PyObject *merges = NULL;
    if (progress != Py_None && !PyCallable_Check(progress))
        PyErr_SetString(PyExc_TypeError, "progress must be None or callable");
    else if (vocab_size >= INT32_MAX)
        PyErr_SetString(PyExc_OverflowError, "vocab_size is too large");
    else if (load_tokens(&m, tokens) == 0 && load_words(&m, &symbols, &lengths, &counts) == 0)
        merges = run(&m, vocab_size, progress);
    merger_free(&m);
    PyBuffer_Release(&symbols);
    PyBuffer_Release(&lengths);
    PyBuffer_Release(&counts);
    return merges;
}

static PyMethodDef methods[] = {
    {"merge_pairs", merge_pairs, METH_VARARGS,
     "merge_pairs(symbols, lengths, counts, tokens, vocab_size, progress) -> [(left id, right id), ...]"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "gpt25.tokenizer._bpe", "BPE training's merge loop in C.", -1, methods,
};

PyMODINIT_FUNC PyInit__bpe(void) { return PyModule_Create(&module); }
