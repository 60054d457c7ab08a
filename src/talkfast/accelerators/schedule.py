"""Key-step schedules: which denoising steps run the full network."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# FasterDiffusion's non-uniform key steps for 50 DDIM steps (dense early).
DENSE_EARLY_50 = (0, 1, 2, 3, 5, 10, 15, 25, 35)


def deepcache_power_keys(total: int, count: int, center: int, power: float) -> list[int]:
    """DeepCache's non-uniform key steps (horseee/DeepCache, ``sample_from_quad_center`` in
    DeepCache/sd/pipeline_stable_diffusion.py at 1691a3a): ``count + 1`` points evenly spaced from
    ``(-center) ** (1 / p)`` to ``(total - center) ** (1 / p)``, raised to ``p``, truncated to
    integers, de-duplicated; the inner ones shifted by ``center``, with step 0 in front. The root
    of the negative end is complex there (Python's principal power), and only the real part of
    the result is kept; ``p`` starts at ``power`` and drops by 0.02 until exactly ``count`` steps
    come out. Dense around ``center``, sparse far from it."""
    p = power
    while p > 1:
        lo, hi = complex(-center) ** (1 / p), complex(total - center) ** (1 / p)
        xs = [lo + (hi - lo) * i / count for i in range(count)] + [hi]
        values = sorted({int((x**p).real) for x in xs})
        keys = [0] + [v + center for v in values[1:-1]]
        if len(keys) == count:
            return keys
        p -= 0.02
    raise ValueError(f"no power schedule with {count} key steps of {total} around {center}; use another interval")


@dataclass(frozen=True)
class KeySchedule:
    """``kind``: "uniform" (every ``interval``-th step), "dense" (FasterDiffusion's
    {0,1,2,3,5,10,15,25,35} of 50, scaled to the step count), "power" (DeepCache's non-uniform
    schedule with as many key steps as ``interval`` gives, dense around ``center`` x the step
    count, exponent ``power``: DeepCache's center 15 / power 1.4 of 50 steps scaled) or
    "explicit" (``steps``). ``final``: the last step is a key step too (its prediction sets the
    output, so a full last step is worth more than any other)."""

    kind: str = "uniform"
    interval: int = 2
    steps: tuple[int, ...] = ()
    center: float = 0.3
    power: float = 1.4
    final: bool = False

    def keys(self, num_steps: int) -> tuple[int, ...]:
        if num_steps < 1:
            raise ValueError("need at least one step")
        if self.kind == "uniform":
            if self.interval < 1:
                raise ValueError("key-step interval must be >= 1")
            keys = set(range(0, num_steps, self.interval))
        elif self.kind == "dense":
            keys = {min(num_steps - 1, round(k * num_steps / 50)) for k in DENSE_EARLY_50}
        elif self.kind == "power":
            if self.interval < 1:
                raise ValueError("key-step interval must be >= 1")
            count = -(-num_steps // self.interval)
            keys = set(range(num_steps)) if count >= num_steps else set(
                deepcache_power_keys(num_steps, count, int(round(self.center * num_steps)), self.power))
        elif self.kind == "explicit":
            bad = [k for k in self.steps if not 0 <= k < num_steps]
            if bad:
                raise ValueError(f"key steps {bad} outside 0..{num_steps - 1}")
            keys = set(self.steps)
        else:
            raise ValueError(f"unknown key-step schedule {self.kind!r}")
        keys.add(0)  # the first step always runs the full network
        if self.final:
            keys.add(num_steps - 1)
        return tuple(sorted(keys))

    def groups(self, num_steps: int) -> list[tuple[int, tuple[int, ...]]]:
        """[(key step, (the steps after it up to the next key step))]."""
        keys = self.keys(num_steps)
        ends = list(keys[1:]) + [num_steps]
        return [(k, tuple(range(k + 1, e))) for k, e in zip(keys, ends)]

    @staticmethod
    def parse(text: str) -> "KeySchedule":
        """"3" -> every 3rd step; "dense"; "power:4" (as many key steps as every 4th, DeepCache's
        power schedule; "power:4:0.3:1.4" sets center and power); "0,1,2,5,9" -> explicit list;
        a trailing "+last" makes the last step a key step too ("3+last")."""
        text = text.strip()
        if text.endswith("+last"):
            return dataclasses.replace(KeySchedule.parse(text[: -len("+last")]), final=True)
        if text == "dense":
            return KeySchedule("dense")
        if text.startswith("power"):
            parts = text.split(":")
            if len(parts) > 4:
                raise ValueError(f"power schedule is power:INTERVAL[:CENTER[:POWER]], not {text!r}")
            nums = [float(x) for x in parts[1:]]
            defaults = KeySchedule("power", interval=4)
            return KeySchedule("power", interval=int(nums[0]) if nums else defaults.interval,
                               center=nums[1] if len(nums) > 1 else defaults.center,
                               power=nums[2] if len(nums) > 2 else defaults.power)
        if "," in text:
            return KeySchedule("explicit", steps=tuple(int(x) for x in text.split(",") if x.strip()))
        return KeySchedule("uniform", interval=int(text))
