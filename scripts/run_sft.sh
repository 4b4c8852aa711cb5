#!/usr/bin/env bash
# Launch lit-sft fit on one or many nodes with torchrun, resuming from the last checkpoint if there is one.
#
#   NPROC_PER_NODE=8 NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 CHECKPOINT_DIR=/ckpt/run1 \
#       bash scripts/run_sft.sh configs/qwen2.5-0.5b/gsm8k_full.yaml --config configs/strategies/fsdp2.yaml
#
# Under SLURM (one task per node, e.g. `srun --ntasks-per-node=1 bash scripts/run_sft.sh ...`), NNODES,
# NODE_RANK and MASTER_ADDR default from SLURM_NNODES, SLURM_NODEID and the job's first node, so a
# requeued job picks up where it stopped. Everything after the config is passed to `lit-sft fit`.
#
# verl recipes: with CONFIG_PATH and CONFIG_NAME naming a verl sft_trainer.yaml, the run is
# `lit-sft verl --config-path $CONFIG_PATH --config-name $CONFIG_NAME [verl overrides...]` and writes
# CHECKPOINT_DIR/sft/{checkpoints,logs,wandb}; it resumes from the newest checkpoints/global_step_N.
#
#   CONFIG_PATH=recipe/config CONFIG_NAME=sft_trainer NPROC_PER_NODE=8 CHECKPOINT_DIR=/ckpt/run1 \
#       bash scripts/run_sft.sh data.train_files=/data/train.parquet optim.lr=1e-5
set -euo pipefail
PYTHON=${PYTHON:-python}   # the interpreter of the environment lit_sft is installed in

if [ -n "${CONFIG_NAME:-}" ]; then
    CONFIG=${CONFIG_PATH:-.}/${CONFIG_NAME%.yaml}.yaml
    CHECKPOINT_DIR=${CHECKPOINT_DIR:-runs/${CONFIG_NAME%.yaml}}
else
    CONFIG=${1:?usage: run_sft.sh CONFIG [lit-sft fit options], or CONFIG_PATH=DIR CONFIG_NAME=NAME run_sft.sh [verl overrides]}
    shift
fi

if [ -z "${NPROC_PER_NODE:-}" ]; then
    NPROC_PER_NODE=$("$PYTHON" -c "import torch; print(max(torch.cuda.device_count(), 1))")
fi
NNODES=${NNODES:-${SLURM_NNODES:-1}}
NODE_RANK=${NODE_RANK:-${SLURM_NODEID:-0}}
if [ -z "${MASTER_ADDR:-}" ]; then
    if [ -n "${SLURM_JOB_NODELIST:-}" ]; then
        MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    else
        MASTER_ADDR=127.0.0.1
    fi
fi
MASTER_PORT=${MASTER_PORT:-29500}
CHECKPOINT_DIR=${CHECKPOINT_DIR:-runs/$(basename "$CONFIG" .yaml)}

# torchrun forwards only SIGTERM/SIGINT/SIGHUP/SIGQUIT by default: SLURM's SIGUSR1 warning would kill the
# launcher and orphan the workers. Workers get SHUTDOWN_TIMEOUT seconds (torchrun's default: 30) to finish
# the step and write last.ckpt before SIGKILL. Both options are newer than some supported torch versions
# (--signals-to-handle came in 2.9, --shutdown-timeout in 2.12), and an older torchrun's argparse refuses
# the whole launch over one unknown option, so each is passed only where this torchrun lists it.
TORCHRUN_HELP=$("$PYTHON" -m torch.distributed.run --help 2>/dev/null || true)
TORCHRUN=("$PYTHON" -m torch.distributed.run)
if grep -q -e '--signals-to-handle' <<<"$TORCHRUN_HELP"; then
    TORCHRUN+=(--signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1)
else
    echo "run_sft.sh: this torchrun has no --signals-to-handle (torch < 2.9): SIGUSR1 stops the launcher" \
        "without a checkpoint; stop runs with SIGTERM" >&2
fi
if grep -q -e '--shutdown-timeout' <<<"$TORCHRUN_HELP"; then
    TORCHRUN+=(--shutdown-timeout "${SHUTDOWN_TIMEOUT:-300}")
else
    echo "run_sft.sh: this torchrun has no --shutdown-timeout (torch < 2.12): workers get its fixed 30 s to" \
        "save after a stop signal, not SHUTDOWN_TIMEOUT" >&2
fi
TORCHRUN+=(--nnodes "$NNODES" --nproc_per_node "$NPROC_PER_NODE" --node_rank "$NODE_RANK"
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT")

if [ -n "${CONFIG_NAME:-}" ]; then
    # verl's trainer.resume_mode=auto resumes from the newest global_step_N; wandb writes $WANDB_DIR/wandb.
    mkdir -p "$CHECKPOINT_DIR/sft"
    export WANDB_DIR=${WANDB_DIR:-$CHECKPOINT_DIR/sft}
    exec "${TORCHRUN[@]}" -m lit_sft verl --config-path "${CONFIG_PATH:-.}" --config-name "$CONFIG_NAME" \
        trainer.default_local_dir="$CHECKPOINT_DIR/sft/checkpoints" --log-dir "$CHECKPOINT_DIR/sft/logs" "$@"
fi

RESUME=()
if [ -e "$CHECKPOINT_DIR/checkpoints/last.ckpt" ]; then
    RESUME=(--ckpt_path last)
    echo "run_sft.sh: resuming from $CHECKPOINT_DIR/checkpoints/last.ckpt"
fi

ACCELERATOR=()
if [ "$("$PYTHON" -c 'import torch; print(int(torch.cuda.is_available()))')" = "0" ]; then
    ACCELERATOR=(--trainer.accelerator cpu)   # a CPU machine: gloo, one process per NPROC_PER_NODE
fi

exec "${TORCHRUN[@]}" -m lit_sft fit --config "$CONFIG" "$@" \
    --trainer.num_nodes "$NNODES" --trainer.devices "$NPROC_PER_NODE" \
    --trainer.default_root_dir "$CHECKPOINT_DIR" "${ACCELERATOR[@]}" "${RESUME[@]}"
