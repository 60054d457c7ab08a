"""Scaling out: one generation over several processes (:mod:`.distributed`, torchrun) and batch
manifests over a Ray cluster (:mod:`.ray_batch`). Nothing here is imported by the rest of the
package unless asked for, so neither torch.distributed setup nor Ray is needed for a plain run."""
