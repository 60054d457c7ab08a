"""Key-step schedules: which denoising steps run the full network."""

from __future__ import annotations

from dataclasses import dataclass

# FasterDiffusion's non-uniform key steps for 50 DDIM steps (dense early).
DENSE_EARLY_50 = (0, 1, 2, 3, 5, 10, 15, 25, 35)


@dataclass(frozen=True)
class KeySchedule:
    """``kind``: "uniform" (every ``interval``-th step), "dense" (FasterDiffusion's
    {0,1,2,3,5,10,15,25,35} of 50, scaled to the step count) or "explicit" (``steps``)."""

    kind: str = "uniform"
    interval: int = 2
    steps: tuple[int, ...] = ()

    def keys(self, num_steps: int) -> tuple[int, ...]:
        if num_steps < 1:
            raise ValueError("need at least one step")
        if self.kind == "uniform":
            if self.interval < 1:
                raise ValueError("key-step interval must be >= 1")
            keys = set(range(0, num_steps, self.interval))
        elif self.kind == "dense":
            keys = {min(num_steps - 1, round(k * num_steps / 50)) for k in DENSE_EARLY_50}
        elif self.kind == "explicit":
            bad = [k for k in self.steps if not 0 <= k < num_steps]
            if bad:
                raise ValueError(f"key steps {bad} outside 0..{num_steps - 1}")
            keys = set(self.steps)
        else:
            raise ValueError(f"unknown key-step schedule {self.kind!r}")
        keys.add(0)  # the first step always runs the full network
        return tuple(sorted(keys))

    def groups(self, num_steps: int) -> list[tuple[int, tuple[int, ...]]]:
        """[(key step, (the steps after it up to the next key step))]."""
        keys = self.keys(num_steps)
        ends = list(keys[1:]) + [num_steps]
        return [(k, tuple(range(k + 1, e))) for k, e in zip(keys, ends)]

    @staticmethod
    def parse(text: str) -> "KeySchedule":
        """"3" -> every 3rd step; "dense"; "0,1,2,5,9" -> explicit list."""
        text = text.strip()
        if text == "dense":
            return KeySchedule("dense")
        if "," in text:
            return KeySchedule("explicit", steps=tuple(int(x) for x in text.split(",") if x.strip()))
        return KeySchedule("uniform", interval=int(text))
