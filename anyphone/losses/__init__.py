from anyphone.losses.rnnt import (  # noqa: F401
    do_rnnt_pruning,
    get_rnnt_backend,
    get_rnnt_prune_ranges,
    mutual_information_recursion,
    rnnt_loss,
    rnnt_loss_pruned,
    rnnt_loss_simple,
    rnnt_loss_smoothed,
)
