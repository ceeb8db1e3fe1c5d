#!/bin/sh
# Runs its arguments (`hpo worker ... --device cuda`) on one GPU: the replica takes the lowest
# free slot k, held by a lock file in $HPO_GPU_SLOTS (a volume the GPU replicas share) for as
# long as the command lives, and sees GPU k mod n alone (CUDA_VISIBLE_DEVICES), n being the GPUs
# it was given. So N replicas on n GPUs spread evenly; with one GPU, or HPO_GPU_SPREAD=0, the
# command runs as it is.
set -eu
slots=${HPO_GPU_SLOTS:-/app/gpu-slots}
if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    gpus=$(printf '%s' "$CUDA_VISIBLE_DEVICES" | tr ',' ' ')
elif command -v nvidia-smi > /dev/null 2>&1; then
    gpus=$(nvidia-smi --query-gpu=index --format=csv,noheader | tr -d ' ' | tr '\n' ' ')
else
    gpus=$(python -c "import torch; print(*range(torch.cuda.device_count()))")
fi
# shellcheck disable=SC2086 # split the list into words
n=$(echo $gpus | wc -w)
if [ "${HPO_GPU_SPREAD:-1}" = 0 ] || [ "$n" -le 1 ] || [ ! -w "$slots" ]; then
    exec "$@"
fi
slot=0
while [ "$slot" -lt 1024 ]; do
    exec 9>> "$slots/slot$slot"
    if flock -n 9; then
        # the GPU at position slot mod n of the list
        # shellcheck disable=SC2086
        gpu=$(echo $gpus | cut -d ' ' -f $((slot % n + 1)))
        export CUDA_VISIBLE_DEVICES="$gpu"
        echo "gpu-slot: slot $slot in $slots: GPU $gpu of the $n given ($gpus)" >&2
        exec "$@"   # fd 9, and so the lock, lives as long as the command
    fi
    exec 9>&-
    slot=$((slot + 1))
done
echo "gpu-slot: no free slot in $slots; running on all $n GPUs" >&2
exec "$@"
