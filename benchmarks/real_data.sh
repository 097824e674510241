#!/usr/bin/env bash
# The real-data measurements of docs/second_order.md: sgd, simplecil, joint, ITA and IEL on the offline real
# datasets with EfficientNet-Lite0 (ImageNet) at 64 px, seed 0, 1 epoch; then, from each ITA/IEL checkpoint, the
# head/module components (benchmarks/components.py). Resumable: complete results are reused by benchmarks.compare
# and a components JSON that exists is not recomputed. Usage: bash benchmarks/real_data.sh [DATASET ...]
# with DATASET among c10 (5x2), c10t5 (2x5), mnist, fmnist, c100 (10x10), c100t20 (20x5); default: all.
set -u
OUT=${OUT:-benchmarks/out/real_data}
DATA=${DATA:-benchmarks/out/data}   # written by: python -m benchmarks.mini_data --out benchmarks/out/data
SHARED=${SHARED:-../shared/data}
PY=${PY:-.venv/bin/python}
RUN="env OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 CL_DEFAULT_NUM_WORKERS=0 nice -n 5 timeout 3600 $PY"
# A cheap pre-tuning (32 alignment samples, 5 + 5t epochs) and the demo's head regulariser; "_old" = the published
# head handling, plain "ita"/"iel" = the trained heads started from the pre-tuned ones (--init_head_from_pretuned 1);
# "_ca" = with the end-of-task alignment of the trained heads (--use_ca 1); "_demo" = with ALIGN below.
CHEAP="--batch_size 16 --lr 0.001 --num_epochs_pretuning 1 --num_epochs_align_pretuning 5 \
--num_samples_align_pretuning 32 --batch_size_align_pretuning 32 --stats_batch_size 256 \
--req_weight_cls 0.01 --simple_reg_weight_cls 0.3"
# The published alignment samples/epochs (256, 10 + 5t) and --use_ca 1.
ALIGN="--num_epochs_align_pretuning 10 --num_samples_align_pretuning 256 --use_ca 1"
MODELS=${MODELS:-sgd,simplecil,ita_old=ita,ita=ita,iel=iel,ita_exact=ita}

declare -A EXTRA=(
  [sgd]="--batch_size 16 --lr 0.01 --optim_mom 0.9"
  [joint]="--batch_size 16 --lr 0.01 --optim_mom 0.9"
  [simplecil]="--batch_size 16 --lr 0.001"
  [ita_old]="$CHEAP --fisher_mc_classes 1 --alpha_ita 1"
  [ita]="$CHEAP --fisher_mc_classes 1 --alpha_ita 1 --init_head_from_pretuned 1"
  [iel]="$CHEAP --fisher_mc_classes 1 --beta_iel 1 --init_head_from_pretuned 1"
  [ita_exact]="$CHEAP --fisher_mc_classes all --alpha_ita 1 --init_head_from_pretuned 1"
  [ita_l2]="$CHEAP --fisher_mc_classes 1 --alpha_ita 1 --init_head_from_pretuned 1 --simple_reg_weight_cls 0.45"
  [ita_learn]="$CHEAP --fisher_mc_classes 1 --alpha_ita 0.1 --lr 0.01 --n_epochs 3"
  [ita_ca]="$CHEAP --fisher_mc_classes 1 --alpha_ita 1 --use_ca 1"
  [iel_ca]="$CHEAP --fisher_mc_classes 1 --beta_iel 1 --use_ca 1"
  [ita_demo]="$CHEAP $ALIGN --fisher_mc_classes 1 --alpha_ita 1"
  [iel_demo]="$CHEAP $ALIGN --fisher_mc_classes 1 --beta_iel 1"
  [ita_demo_exact]="$CHEAP $ALIGN --fisher_mc_classes all --alpha_ita 1"
  [ita_demo_lr3]="$CHEAP $ALIGN --fisher_mc_classes 1 --alpha_ita 1 --lr 0.003 --n_epochs 2"
  [ita_demo_lr10]="$CHEAP $ALIGN --fisher_mc_classes 1 --alpha_ita 1 --lr 0.01"
  [iel_old]="$CHEAP --fisher_mc_classes 1 --beta_iel 1"
  [iel_l2]="$CHEAP --fisher_mc_classes 1 --beta_iel 1 --init_head_from_pretuned 1 --simple_reg_weight_cls 0.45"
)

run_dataset() {  # $1 label, $2 data file, $3 n_tasks
  local out="$OUT/$1" ck="real_$1" extras=() label
  for entry in ${MODELS//,/ }; do
    label=${entry%%=*}
    case $label in ita*|iel*) extras+=(--extra "$label:${EXTRA[$label]} --savecheck last --ckpt_name ${ck}_$label") ;;
      *) extras+=(--extra "$label:${EXTRA[$label]}") ;; esac
  done
  $RUN -m benchmarks.compare --dataset seq-custom --backbone efficientnet_lite0 --models "$MODELS" --seeds 1 \
    --out "$out" "${extras[@]}" \
    -- --data_path "$2" --n_tasks "$3" --img_size 64 --normalization half --n_epochs 1 --plots 0
  for m in ita_old ita iel ita_exact ita_l2 iel_l2 ita_learn ita_ca iel_ca iel_old ita_demo iel_demo ita_demo_exact ita_demo_lr3 ita_demo_lr10; do
    local ckpt="checkpoints/${ck}_$m/task_$3.pt" json="$out/components_$m.json"
    if [ -f "$ckpt" ] && [ ! -f "$json" ]; then
      $RUN -m benchmarks.components --checkpoint "$ckpt" --drops "${DROPS:-0}" --out "$json"
    fi
  done
}

for d in "${@:-c10 mnist fmnist c100}"; do
  for name in $d; do
    case $name in
      c10) run_dataset c10 "$DATA/cifar10_small.npz" 5 ;;
      c10t5) run_dataset c10t5 "$DATA/cifar10_small.npz" 2 ;;
      mnist) run_dataset mnist "$DATA/mnist5k_mini.npz" 5 ;;
      fmnist) run_dataset fmnist "$DATA/fmnist_mini.npz" 5 ;;
      c100) run_dataset c100 "$SHARED/cifar100_mini.npz" 10 ;;
      c100t20) run_dataset c100t20 "$SHARED/cifar100_mini.npz" 20 ;;
      *) echo "unknown dataset $name" >&2; exit 2 ;;
    esac
  done
done
