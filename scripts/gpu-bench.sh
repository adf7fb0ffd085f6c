#!/usr/bin/env bash
# Issue 6's GPU figures in one command, on a machine with an NVIDIA GPU and PyTorch:
# a BGE-M3-shaped model with random weights (XLM-RoBERTa-large, BGE-M3 layout), corpora
# of ~50 and ~512 tokens, a stage breakdown of one large call, and `hybridembed bench`
# (sentence-transformers vs hybridembed torch, bf16, dense+sparse+multivector in one pass).
#
#   scripts/gpu-bench.sh OUT_DIR [PHASE ...]
#   phases: env model probe stages bench-short bench-long (default: all, in that order)
#
# Runs from the repository root without installing it (PYTHONPATH); needs torch,
# transformers, tokenizers, sentence-transformers, matplotlib and tqdm. Results (JSON,
# PNG, a log) land in OUT_DIR; the model and corpora in $WORK (default /tmp/hybridembed-gpu)
# and are reused by later runs. Environment: REPEATS (3), BUDGETS ("65536 131072 262144"),
# STAGES ("short-dense short-all long-all"), SHORT_TEXTS (20000), LONG_TEXTS (3000).
set -euo pipefail
out=${1:?usage: scripts/gpu-bench.sh OUT_DIR [PHASE ...]}
shift
phases=${*:-env model probe stages bench-short bench-long}
py=${PYTHON:-python3}
work=${WORK:-/tmp/hybridembed-gpu}
shape=${SHAPE:-bge-m3}   # SHAPE=tiny and fewer texts: a dry run on a CPU
n_short=${SHORT_TEXTS:-20000}
n_long=${LONG_TEXTS:-3000}
repeats=${REPEATS:-3}
budgets=${BUDGETS:-65536 131072 262144}
stage_runs=${STAGES:-short-dense short-all long-all}
model=$work/$shape-shaped
short=$work/short-50-tokens.txt
long=$work/long-512-tokens.txt
outputs=dense,sparse,multivector
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$out" "$work"
log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$out/log.txt"; }

for phase in $phases; do
  case $phase in
  env)
    log env
    { nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
      nproc
      $py -c 'import torch, transformers, tokenizers, sentence_transformers as st
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())
print("transformers", transformers.__version__, "tokenizers", tokenizers.__version__,
      "sentence-transformers", st.__version__)'
    } 2>&1 | tee -a "$out/log.txt" ;;
  model)
    log "model and corpora"
    [ -f "$model/config.json" ] || $py -m hybridembed.bench.random_model "$model" --shape "$shape"
    # ~1 token per word with the model's tokenizer, plus <s>, </s> and the numbering:
    # 42-52 words -> ~50 tokens, 490-530 words -> ~512 tokens.
    $py -c "from hybridembed.bench import corpus
open('$short', 'w').write('\n'.join(corpus.texts($n_short, 42, 52, seed=1)))
open('$long', 'w').write('\n'.join(corpus.texts($n_long, 490, 530, seed=2)))" ;;
  probe)
    log "transfer probe"
    $py scripts/gpu-transfer-probe.py 2>&1 | tee -a "$out/log.txt" ;;
  stages)
    log stages
    for run in $stage_runs; do
      case $run in
        short-dense) set -- "$short" "$n_short" dense ;;
        short-all) set -- "$short" "$n_short" "$outputs" ;;
        long-all) set -- "$long" "$n_long" "$outputs" ;;
        *) echo "unknown stage run $run; valid: short-dense short-all long-all" >&2; exit 2 ;;
      esac
      $py -m hybridembed.bench.stages --model "$model" --corpus "$1" --texts "$2" \
        --outputs "$3" --repeats "$((repeats > 2 ? 2 : repeats))" --json >"$work/stages.json"
      $py -c "import json
from hybridembed.bench.stages import format_report
r = json.load(open('$work/stages.json')); print(format_report(r))
open('$out/stages.jsonl', 'a').write(json.dumps(r) + '\n')" | tee -a "$out/log.txt"
    done ;;
  bench-short | bench-long)
    log "$phase"
    if [ "$phase" = bench-short ]; then texts=$short; n=$n_short; else texts=$long; n=$n_long; fi
    $py -m hybridembed.cli bench --model "$model" --engines sentence-transformers torch \
      --outputs "$outputs" --corpus "$texts" --texts "$n" --budgets $budgets --repeats "$repeats" \
      --out "$work/$phase" 2>&1 | tee -a "$out/log.txt"
    cp "$work/$phase/bench.json" "$out/$phase.json"
    cp "$work/$phase/bench.png" "$out/$phase.png" ;;
  *) echo "unknown phase $phase; valid: env model probe stages bench-short bench-long" >&2; exit 2 ;;
  esac
done
log done
