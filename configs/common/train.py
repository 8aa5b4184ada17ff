# Detectron2's LazyConfig `train` node (as in its configs/common/train.py), plus four keys.
train = dict(
    output_dir="./output",
    init_checkpoint="",
    max_iter=90000,
    amp=dict(enabled=False),  # options for Automatic Mixed Precision
    ddp=dict(  # options for DistributedDataParallel
        broadcast_buffers=False,
        find_unused_parameters=False,
        fp16_compression=False,
    ),
    checkpointer=dict(period=5000, max_to_keep=100),  # options for PeriodicCheckpointer
    eval_period=5000,
    log_period=20,
    device="cuda",
    seed=-1,
    # This project's additions (efl.solver): a schedule in epochs, resolved at start-up
    # from the training loader (efl.engine.plan_run; it then replaces max_iter); and
    # clipping of the total gradient norm.
    epochs=None,
    clip_grad=dict(enabled=False, max_norm=35.0, norm_type=2.0),
    # Model EMA (efl.engine.ema), used for evaluation when enabled: decay x (1 - exp(-t / tau)).
    ema=dict(enabled=False, decay=0.9998, tau=2000),
    # BatchNorm statistics of the model (and EMA) averaged over processes before each
    # evaluation (efl.engine.norm_sync; the YOLOX-IP recipe's runtime.async_norm).
    all_reduce_norm=False,
)
