#!/usr/bin/env bash
# One GPU check of gpt25 that fits a single ~10-minute lease of one H100/H200 machine.
#
#   bash benchmarks/gpu_check.sh                  # on the GPU machine, from the project root
#   bash benchmarks/gpu_check.sh --cpu-dry-run    # here: the same stages at tiny sizes on the CPU, in seconds
#
# The GPU machine has python3 with torch, transformers, tiktoken, pytest and pytest-xdist, but no uv
# and no internet: the C extensions are built in place, and the data comes in a git-ignored folder
# sent along with the working tree (GPT25_GPU_DATA, default .gpu-data):
#   mkdir -p .gpu-data && cp -r ../shared/data/english ../shared/data/gpt2 .gpu-data/
# Without that folder (the dry run of a fresh clone) the embedded corpus and a tokenizer trained on it
# stand in.
#
# Stages run in priority order, each time-boxed and all inside one deadline (GPU_CHECK_SECONDS,
# default 540; 1800 for the dry run), so a slow stage cannot eat the rest:
#   1 the CUDA tests (-m cuda)        2 generation benchmark          3 the 124M recipe and gpt25x through
#   `gpt25 train` + model step vs transformers + the NaN guard's sync  4 SIGTERM and resume
#   5 `data prepare` with 1-16 workers  7 `gpt25 sft` from stage 3's checkpoint + the serving engine
#   (benchmarks/engine.py)              8 CORE (`gpt25 eval --core --core_limit`) on stage 3's checkpoint
#   6 the whole suite, last: it takes whatever time is left
# The dry run runs the same command lines, but stages 1 and 6 on one test file each (the suite itself
# runs the dry run), and SFT on a few written conversations instead of the embedded chat set.
# CORE reads the real eval bundle from $DATA/eval_bundle when it is there (nanochat's eval_bundle.zip,
# unpacked; the GPU machine has no internet), else a small bundle of every task kind written here.
# It ends with one summary table (benchmarks/gpu_check_report.py) and leaves in $OUT (default
# runs/gpu_check): log.txt, summary.md, results.json, stages.tsv, tests.xml, suite.xml and the train
# and SFT runs' metrics.jsonl.
set -uo pipefail

export mode=gpu
case "${1:-}" in
    "") ;;
    --cpu-dry-run) mode=dry ;;
    -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1'; use --cpu-dry-run or nothing" >&2; exit 2 ;;
esac

set -a  # the settings below reach the stages, which run as `bash -c` under timeout
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 2
PY=${PYTHON:-python3}
OUT=${OUT:-$ROOT/runs/gpu_check}
DATA=${GPT25_GPU_DATA:-$ROOT/.gpu-data}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
DEADLINE=$(( $(date +%s) + ${GPU_CHECK_SECONDS:-$([ $mode = gpu ] && echo 540 || echo 1800)} ))
mkdir -p "$OUT"
: > "$OUT/stages.tsv"
export PYTHONPATH=$ROOT/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=offline
export GPT25_SHARED_DATA=$DATA
if [ $mode = dry ]; then
    export CUDA_VISIBLE_DEVICES=""  # the dry run never touches a GPU, even on the GPU machine
fi
exec > >(tee "$OUT/log.txt") 2>&1
G="$PY -m gpt25"

# Sizes: the GPU run's, and the dry run's tiny ones.
if [ $mode = gpu ]; then
    DEVICE=cuda
    GENERATE="--configs 124m --batch-sizes 1,8 --new-tokens 200 --repeats 2 --dtype bf16"
    TRAIN="--batch_size 32 --grad_accum_steps 1 --total_batch_tokens 0 --train_steps 300
           --warmup_steps 30 --eval_every 150 --eval_steps 8 --save_every 300 --log_every 25 --compile"
    RECIPE="--config configs/gpt25-124m.toml" PRESET="--config configs/gpt25x-124m.toml"
    MODEL_STEP="--configs 124m --dtypes bf16 --batch-size 32 --steps 10 --warmup 3 --compile"
    SYNC="--config configs/gpt25-124m.toml --set compile=on --steps 20 --repeats 3"
    RESUME="--config configs/gpt25-124m.toml --batch_size 4 --grad_accum_steps 1 --train_steps 100000
            --warmup_steps 5 --save_every 20 --eval_every 0 --eval_steps 2 --log_every 1"
    DATA_COPIES=8 WORKER_COUNTS="1 2 4 8 16" SUITE_WORKERS=14
    SFT="--context_length 1024 --batch_size 16 --train_steps 60 --warmup_steps 6 --lr 1e-4 --dtype bfloat16
         --eval_every 30 --eval_steps 8 --save_every 60 --log_every 10"
    SFT_DATA=python-docs-chat
    ENGINE="--config 124m --dtype bf16 --max-tokens 64 --concurrency 1,16"
    CORE_LIMIT=100
    CUDA_TESTS=tests SUITE_TESTS=tests
else
    DEVICE=cpu
    TINY="--context_length 32 --d_model 32 --num_layers 2 --num_heads 2 --d_ff 64"
    GENERATE="--configs tiny --batch-sizes 1 --new-tokens 8 --repeats 1 --dtype fp32 --skip-no-cache"
    TRAIN="$TINY --batch_size 8 --train_steps 6 --warmup_steps 2 --eval_every 3 --eval_steps 2 --save_every 6
           --log_every 1"
    RECIPE="" PRESET="--arch gpt25x --optimizer muon --schedule wsd"
    MODEL_STEP="--configs tiny --dtypes fp32 --batch-size 1 --steps 1 --warmup 0"
    SYNC="--set context_length=32 d_model=32 num_layers=2 num_heads=2 d_ff=64 batch_size=4 --steps 2 --repeats 1"
    RESUME="$TINY --batch_size 4 --train_steps 100000 --warmup_steps 2 --save_every 2 --eval_every 0 --eval_steps 2
            --log_every 1"
    DATA_COPIES=1 WORKER_COUNTS="1 2" SUITE_WORKERS=0
    SFT="--batch_size 4 --train_steps 4 --warmup_steps 1 --lr 1e-3 --val_fraction 0.25 --eval_every 2
         --eval_steps 2 --save_every 4 --log_every 1"
    SFT_DATA=$WORK/chat.jsonl  # the embedded set takes ~20 s of CPU to build: a few written conversations instead
    ENGINE="--config tiny --dtype fp32 --max-tokens 8 --threads 1"
    CORE_LIMIT=4
    CUDA_TESTS=tests/model/test_model_cuda.py SUITE_TESTS=tests/test_files.py
fi
set +a

export started=$(date +%s)
stamp() { echo; echo "=== $(( $(date +%s) - started ))s: $*"; }

# stage NAME BUDGET_SECONDS COMMAND...: runs COMMAND under the smaller of its budget and the time left,
# then SIGINT (pytest still writes its report, training saves), and records name, exit status, seconds
# and budget in stages.tsv (status "skipped" past the deadline).
stage() {
    local name=$1 budget=$2; shift 2
    local left=$(( DEADLINE - $(date +%s) ))
    [ "$budget" -gt "$left" ] && budget=$left
    stamp "$name (time box ${budget}s)"
    if [ "$left" -lt 15 ]; then
        echo "skipped: ${left}s left before the deadline"
        printf '%s\tskipped\t0\t%s\n' "$name" "$budget" >> "$OUT/stages.tsv"
        return
    fi
    local begun=$(date +%s) status=0
    timeout --signal INT --kill-after 15 "$budget" bash -c '"$@"' stage "$@" || status=$?
    [ $status = 124 ] && echo "timed out after ${budget}s"
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(( $(date +%s) - begun ))" "$budget" >> "$OUT/stages.tsv"
}

# ----- 0. set-up: the machine, the C extensions, GPT-2's tokenizer and the English shards -----

setup() {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    $PY -c "import sys, torch, transformers; print('python', sys.version.split()[0], 'torch', torch.__version__,
'transformers', transformers.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
    echo "commit ${GPT25_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
    $PY setup.py -q build_ext --inplace > "$WORK/build.log" 2>&1 || tail -5 "$WORK/build.log"
    $PY -c "import gpt25.tokenizer._pretokens, gpt25.tokenizer._bpe; print('C extensions: built')" ||
        echo "C extensions: missing, the tokenizer runs in pure Python"
    mkdir -p "$WORK/text"
    if [ -d "$DATA/english" ]; then
        for file in "$DATA"/english/*.txt; do
            if [ $mode = gpu ]; then ln -s "$file" "$WORK/text/"; else head -n 1000 "$file" > "$WORK/text/$(basename "$file")"; fi
        done
    else
        $G data corpus --out "$WORK/corpus.txt" && head -n 8000 "$WORK/corpus.txt" > "$WORK/text/corpus.txt"
    fi
    if [ -f "$DATA/gpt2/gpt2_vocab.json" ]; then
        $G tokenizer import --vocab "$DATA/gpt2/gpt2_vocab.json" --merges "$DATA/gpt2/gpt2_merges.txt" --out "$WORK/tok"
    else
        $G tokenizer train --input "$WORK"/text/*.txt --vocab_size 512 --special_token "<|endoftext|>" --out "$WORK/tok" --no_progress
    fi
    $G data prepare --source "$WORK/text" --tokenizer "$WORK/tok" --out "$WORK/shards" --val_fraction 0.02 --no_progress
}

# ----- 1. the CUDA tests -----

cuda_tests() {
    $PY -m pytest -q -p no:cacheprovider -m cuda --timeout 240 --junitxml "$OUT/tests.xml" $CUDA_TESTS
}

# ----- 2. generation: graph-replayed cached vs eager cached vs no cache vs transformers -----

generate_benchmark() {
    $PY benchmarks/generate.py --device $DEVICE $GENERATE --json "$WORK/generate.json"
}

# ----- 3. the recipe's model and the gpt25x preset's through `gpt25 train` (the same steps and tokens), the bare
# step vs transformers, the NaN guard's sync -----

train_recipe() {
    $G train $RECIPE $TRAIN --device $DEVICE --data "$WORK/shards" --tokenizer "$WORK/tok" --out "$WORK/run" 2>&1 |
        tr '\r' '\n' | grep -v "^train:"
    $G train $PRESET $TRAIN --device $DEVICE --data "$WORK/shards" --tokenizer "$WORK/tok" --out "$WORK/run_x" 2>&1 |
        tr '\r' '\n' | grep -v "^train:"
}

model_step() {
    $PY benchmarks/model.py --device $DEVICE $MODEL_STEP --json "$WORK/model.json"
}

sync_cost() {
    $PY benchmarks/train.py --device $DEVICE $SYNC --sync-cost --data "$WORK/shards" --tokenizer "$WORK/tok" \
        > "$WORK/sync.json"
    cat "$WORK/sync.json"
}

# ----- 4. SIGTERM after a checkpoint, resume with --checkpoint latest, against an uninterrupted run -----
# All three runs have the same (never reached) --train_steps, so the schedule is the same and no run can
# finish before its signal: the comparison does not depend on the machine's speed. The uninterrupted run
# trains beside the other two.

last_step() {  # the newest step in RUN_DIR/metrics.jsonl (0 when none); its last line may be half-written
    tail -n 2 "$1/metrics.jsonl" 2>/dev/null | sed -n 's/^{"step": \([0-9]*\).*/\1/p' | tail -n 1 | grep . || echo 0
}

# train_until RUN_DIR SIGNAL CONDITION [flags...]: train in the background until CONDITION (a shell test)
# holds, then send SIGNAL; prints the trainer's exit status.
train_until() {
    local run=$1 signal=$2 condition=$3; shift 3
    $G train $RESUME --device $DEVICE --data "$WORK/shards" --tokenizer "$WORK/tok" --out "$run" "$@" \
        >> "$run.log" 2>&1 &
    local trainer=$!
    until eval "$condition" || ! kill -0 $trainer 2>/dev/null; do sleep 0.1; done
    kill -"$signal" $trainer 2>/dev/null
    wait $trainer
    echo $?
}

resume() {
    local save_every=$(sed -n 's/.*--save_every \([0-9]*\).*/\1/p' <<< "$RESUME")
    # The straight run stops at the step written to until_step once the interrupted run has saved: on a loaded
    # machine that run may get past its first checkpoint before the signal lands, so the comparison counts
    # from where it really saved, never from a fixed step (which it could already have passed).
    echo 1000000000 > "$WORK/until_step"
    train_until "$WORK/straight" TERM "[ \$(last_step $WORK/straight) -ge \$(cat $WORK/until_step) ]" > /dev/null &
    local straight=$!
    train_until "$WORK/resumed" TERM "[ -d $WORK/resumed/checkpoints/step_$(printf %07d "$save_every") ]" \
        > "$WORK/interrupted_status"
    ls "$WORK/resumed/checkpoints" | tail -n 1 | sed 's/step_0*//' > "$WORK/resume_step"
    local until_step=$(( $(cat "$WORK/resume_step") + 2 * save_every ))
    echo "$until_step" > "$WORK/until_step"
    echo "interrupted run: exit status $(cat "$WORK/interrupted_status") (143: stopped by SIGTERM after saving)," \
        "saved at step $(cat "$WORK/resume_step")"
    train_until "$WORK/resumed" TERM "[ \$(last_step $WORK/resumed) -ge $until_step ]" --checkpoint latest > /dev/null
    wait $straight
    echo "compared up to step $until_step: straight run at $(last_step "$WORK/straight"), resumed at $(last_step "$WORK/resumed")"
    grep -h "error" "$WORK/straight.log" "$WORK/resumed.log" | head -5
}

# ----- 5. `gpt25 data prepare` with 1..16 workers on the same text -----

data_scaling() {
    mkdir -p "$WORK/copies"
    for copy in $(seq 1 $DATA_COPIES); do
        for file in "$WORK"/text/*.txt; do ln -sf "$(readlink -f "$file")" "$WORK/copies/$copy-$(basename "$file")"; done
    done
    echo "input: $(cat "$WORK"/copies/* | wc -c) bytes in $(ls "$WORK/copies" | wc -l) files"
    for workers in $WORKER_COUNTS; do
        rm -rf "$WORK/scaling"
        local begun=$(date +%s%N)
        $G data prepare --source "$WORK/copies" --tokenizer "$WORK/tok" --out "$WORK/scaling" --val_fraction 0.001 \
            --workers "$workers" --no_progress > /dev/null || return 1
        local milliseconds=$(( ($(date +%s%N) - begun) / 1000000 ))
        printf '%s\t%s\t%s\n' "$workers" "$milliseconds" "$($PY -c "import json, sys
print(json.load(open(sys.argv[1]))['last_run']['seconds'])" "$WORK/scaling/manifest.json")" | tee -a "$WORK/scaling.tsv"
    done
}

# ----- 7. `gpt25 sft` from stage 3's checkpoint; the serving engine against one request at a time -----

write_chat_sample() {  # FILE: a few short conversations in the --data JSONL format (the dry run's SFT data)
    for first in $(seq 1 8); do
        for second in $(seq 1 8); do
            printf '{"messages": [{"role": "user", "content": "What is %s + %s?"}, ' "$first" "$second"
            printf '{"role": "assistant", "content": "%s"}]}\n' "$(( first + second ))"
        done
    done > "$1"
}

sft_and_serve() {  # the engine first: it needs nothing from earlier stages
    local status=0
    $PY benchmarks/engine.py --device $DEVICE $ENGINE --json "$WORK/engine.json" || status=1
    if ! ls -d "$WORK"/run/checkpoints/step_* > /dev/null 2>&1; then
        echo "sft: stage 3 (train) left no checkpoint in $WORK/run/checkpoints, so there is no base model to fine-tune"
        status=1
    else
        [ $mode = dry ] && write_chat_sample "$SFT_DATA"
        $G sft $SFT --device $DEVICE --checkpoint "$WORK/run" --tokenizer "$WORK/tok" --data "$SFT_DATA" \
            --out "$WORK/sft" 2>&1 | tr '\r' '\n' | grep -v "^train:"
        [ "${PIPESTATUS[0]}" = 0 ] || status=1
    fi
    return $status
}

# ----- 8. CORE on stage 3's checkpoint: the real bundle when sent along, else a small written one -----

write_core_bundle() {  # DIR: core.yaml, eval_meta_data.csv and eval_data/ with one task of each kind
    mkdir -p "$1/eval_data"
    printf '%s\n' "icl_tasks:" \
        "- {label: sample_mc, dataset_uri: mc.jsonl, num_fewshot: [2], icl_task_type: multiple_choice}" \
        "- {label: sample_schema, dataset_uri: schema.jsonl, num_fewshot: [1], icl_task_type: schema}" \
        "- {label: sample_lm, dataset_uri: lm.jsonl, num_fewshot: [1], icl_task_type: language_modeling," \
        "   continuation_delimiter: \"\\nAnswer: \"}" > "$1/core.yaml"
    printf '%s\n' "Eval Task,Random baseline" "sample_mc,50" "sample_schema,50" "sample_lm,0" > "$1/eval_meta_data.csv"
    for n in $(seq 1 8); do
        printf '{"query": "What is %s plus %s?", "choices": ["%s", "%s"], "gold": 0}\n' $n $n $((n + n)) $((n + n + 1))
    done > "$1/eval_data/mc.jsonl"
    for n in $(seq 1 8); do
        printf '{"context_options": ["The %s cats sat", "The %s dogs sat"], "continuation": "on the mat.", "gold": %s}\n' \
            $n $n $((n % 2))
    done > "$1/eval_data/schema.jsonl"
    for n in $(seq 1 8); do
        printf '{"context": "Count on from %s: %s, %s,", "continuation": "%s"}\n' $n $((n + 1)) $((n + 2)) $((n + 3))
    done > "$1/eval_data/lm.jsonl"
}

core_eval() {
    local bundle=$DATA/eval_bundle
    if [ ! -f "$bundle/core.yaml" ]; then
        bundle=$WORK/core_bundle
        write_core_bundle "$bundle"
        echo "no $DATA/eval_bundle: CORE runs on a small written bundle (the pipeline, not a comparable number)"
    fi
    echo "$bundle" > "$WORK/core_bundle_used"
    $G eval --checkpoint "$WORK/run" --tokenizer "$WORK/tok" --device $DEVICE --core --core_bundle "$bundle" \
        --core_limit $CORE_LIMIT --out "$WORK/core.json"
}

# ----- 6. the whole suite on this machine (the dry run: one file, since the suite runs the dry run) -----

suite() {
    $PY -m pytest -q -p no:cacheprovider -n $SUITE_WORKERS --timeout 300 --junitxml "$OUT/suite.xml" $SUITE_TESTS |
        tail -25
}

export -f stamp setup cuda_tests last_step train_until generate_benchmark train_recipe model_step sync_cost resume data_scaling \
    write_chat_sample sft_and_serve write_core_bundle core_eval suite
if [ $mode = gpu ]; then
    budgets=(40 75 90 140 100 70 90 45 75 60 600)
else
    budgets=(300 300 300 300 300 300 300 300 300 300 300)  # the dry run checks that stages work, not their speed
fi
stage setup "${budgets[0]}" setup
stage cuda_tests "${budgets[1]}" cuda_tests
stage generate "${budgets[2]}" generate_benchmark
stage train "${budgets[3]}" train_recipe
stage model_step "${budgets[4]}" model_step
stage sync_cost "${budgets[5]}" sync_cost
stage resume "${budgets[6]}" resume
stage data_scaling "${budgets[7]}" data_scaling
stage sft_and_serve "${budgets[8]}" sft_and_serve
stage core "${budgets[9]}" core_eval
stage suite "${budgets[10]}" suite
cp "$WORK/run/metrics.jsonl" "$OUT/run_metrics.jsonl" 2>/dev/null
cp "$WORK/sft/metrics.jsonl" "$OUT/sft_metrics.jsonl" 2>/dev/null

stamp "summary"
$PY benchmarks/gpu_check_report.py --work "$WORK" --out "$OUT" --mode $mode
status=$?
rm -rf "$WORK"
exit $status
