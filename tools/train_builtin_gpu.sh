#!/usr/bin/env bash
# Train the small SOLOv2 and CenterMask models on one GPU, both at once, within a time budget.
#   tools/train_builtin_gpu.sh OUT_DIR BUDGET_SECONDS
# Same data as the built-in YOLACT: synthetic seed 0 (3000 images) for training, seed 1001
# (200) for validation; the held-out seed 2002 is never generated here.
set -euo pipefail
OUT=${1:?out dir}; BUDGET=${2:?seconds}
PY=${PYTHON:-python}
DATA=/tmp/rtseg_data
mkdir -p "$OUT" "$DATA"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt" || true
$PY -c "import torch, cv2, pycocotools; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"
t0=$(date +%s)
$PY -m rtseg data synthetic $DATA/train --images 3000 --seed 0 --workers 14 --overwrite > /dev/null
$PY -m rtseg data synthetic $DATA/val --images 200 --seed 1001 --workers 14 --overwrite > /dev/null
echo "data: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/gpu.txt"

MODELS="solov2_light_resnet18_half_384 centermask_lite_vovnet19_quarter_384"
# 1) speed probe: 40 iterations of both models at once
for m in $MODELS; do
  $PY -m rtseg -q train --model $m --data $DATA/train --out /tmp/probe_$m --iterations 40 --batch-size 8 \
      --lr 5e-3 --warmup-iters 20 --device cuda --workers 6 --threads 1 --checkpoint-every 1000 > /tmp/probe_$m.log 2>&1 &
done
wait
left=$(( BUDGET - ($(date +%s) - t0) - 30 ))
for m in $MODELS; do
  sec=$($PY -c "
import json,statistics
rows=[json.loads(l) for l in open('/tmp/probe_$m/train_log.jsonl') if '\"seconds\"' in l]
print(statistics.median(r['seconds'] for r in rows[10:]))")
  iters=$($PY -c "print(max(200, min(8000, int($left / ($sec * 1.15)) // 100 * 100)))")
  echo "$m: ${sec} s/it when both train -> $iters iterations in ${left} s" | tee -a "$OUT/gpu.txt"
  # 2) the run: SGD 5e-3 (official SOLOv2 / FCOS: 0.01 at batch 16), cosine, 300 warm-up iterations
  $PY -m rtseg -q train --model $m --data $DATA/train --val-data $DATA/val --out "$OUT/$m" --iterations $iters \
      --batch-size 8 --lr 5e-3 --schedule cosine --warmup-iters 300 --checkpoint-every 100000 --seed 0 \
      --device cuda --workers 6 --threads 1 > "$OUT/$m.log" 2>&1 &
done
wait
for m in $MODELS; do  # keep the shipped fp16 weights; the full checkpoint only if the run did not finish
  if ls "$OUT/$m"/*_final_fp16.pth > /dev/null 2>&1; then rm -f "$OUT/$m/last.pth" "$OUT/$m"/iter_*.pth; fi
done
ls -la "$OUT"/*
