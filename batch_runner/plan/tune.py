"""``batch-run tune``: which engine settings are fastest for this job, on this card.

Trials (``trials.py``) on a sample of the job's own rows, each measured in three passes on its engine
(the median pass stands for it), starting from the job's profile: one knob
changed at a time (``max_num_seqs`` and ``max_num_batched_tokens`` doubled and halved; on a GPU, an
fp8 KV cache and n-gram speculative decoding, where the card and vLLM take them); a doubling or
halving that helped is taken one step further, while it helps; then the best value of each knob
together. Then the best and the profile run once more, one after the other, and
the best is recommended only if both its runs beat both of the profile's: a recommendation is
never slower than the profile on a re-run. A time budget bounds the whole sweep; a sweep trial runs only if the two
re-runs still fit after it, so a short budget ends in a checked recommendation, not a skipped one.
A trial is reckoned at the longest time one has taken so far (a new setting compiles its graphs
afresh), a re-run at its own first time (its graphs are cached by then); the two re-runs run
together or not at all (on an H200 a too-short reserve once skipped the profile's and ran the
leader's alone, which confirms nothing).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import JobSpec
from ..engines import max_num_seqs
from .trials import TrialResult, run_trial

PROFILE = "profile"
# The largest batch vLLM captures in a CUDA graph unless told (512 up to Hopper, 1024 on Blackwell).
# Beyond it decode steps run without graphs, which a small model, bound by launch overhead, pays
# for: on an H200 a 135M model at max_num_seqs 1024 ran at 0.56x the profile's 512. So a trial of
# more sequences captures graphs that cover them (that trial is not yet measured on a GPU).
CUDA_GRAPH_DEFAULT_MAX = 512


@dataclass
class TuneResult:
    trials: list[TrialResult] = field(default_factory=list)
    recheck: list[TrialResult] = field(default_factory=list)  # profile and best, re-run after the sweep
    candidate: TrialResult | None = None  # the sweep's leader, if not the profile
    best: TrialResult | None = None  # None: keep the profile
    gain: float = 1.0  # best over profile, from the re-runs

    def as_dict(self) -> dict[str, Any]:
        return {"trials": [asdict(t) for t in self.trials], "recheck": [asdict(t) for t in self.recheck],
                "candidate": asdict(self.candidate) if self.candidate else None,
                "best": asdict(self.best) if self.best else None, "gain": self.gain}


# Passes of each trial's rows on its engine; the median pass stands for the trial. On an H200, three
# 10-s passes of one setting on one engine ran 23,368 to 28,051 output tok/s (1.20x apart): one pass
# can land anywhere in that, and further passes cost generation time only, not another engine start.
TRIAL_PASSES = 3

# A trial generating for less than this measures noise as much as settings: on an H200, 10-s runs of
# one setting ran at 30,344 and 19,315 output tok/s (1.57x), of the profile at 30,632 and 21,687.
SHORT_TRIAL_S = 30.0

SIZES = ("max_num_seqs", "max_num_batched_tokens")  # the knobs stepped by doubling or halving
TUNE_ROWS = 2000  # the least trial sample by default (four times max_num_seqs where that is more)


def sized(knob: str, value: int, base: dict[str, Any], gpu: bool) -> tuple[str, dict[str, Any]]:
    """A trial of ``knob`` (one of SIZES) at ``value``; more sequences than vLLM's default CUDA
    graphs cover come with graphs that cover them."""
    settings: dict[str, Any] = {f"engine.{knob}": value}
    if (knob == "max_num_seqs" and gpu and value > CUDA_GRAPH_DEFAULT_MAX
            and isinstance(base.get("compilation_config") or {}, dict)):
        settings["engine.extra.compilation_config.max_cudagraph_capture_size"] = value
    return f"{knob} {value}", settings


def base_value(knob: str, base: dict[str, Any]) -> int:
    return max_num_seqs(base) if knob == "max_num_seqs" else int(base.get(knob) or 8192)


def knobs(base: dict[str, Any], gpu: bool, fp8: dict[str, Any] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """The one-knob variations of the effective engine arguments ``base``, those most likely to help
    a batch job first (more sequences, larger steps, a smaller KV cache), so that a short budget
    tries them before the budget runs out. ``fp8``: an fp8 KV cache's settings (with auto sizing,
    the sequences its capacity holds); where the KV cache bounds the sequences (it holds more of
    them in fp8), it goes first: on an H200 a decode-heavy 7B job ran 1.09x with it (issue 24)."""
    seqs, batched = base_value("max_num_seqs", base), base_value("max_num_batched_tokens", base)
    fp8 = fp8 or {"model.kv_cache_dtype": "fp8"}
    kv_bound = fp8.get("engine.max_num_seqs", 0) > seqs
    out = [("kv cache fp8", fp8)] if gpu and kv_bound else []
    out += [sized("max_num_seqs", seqs * 2, base, gpu), sized("max_num_batched_tokens", batched * 2, base, gpu)]
    if gpu and not kv_bound:
        out.append(("kv cache fp8", fp8))
    out += [sized("max_num_seqs", seqs // 2, base, gpu), sized("max_num_batched_tokens", batched // 2, base, gpu)]
    if gpu:
        out.append(("ngram speculation", {"engine.extra.speculative_config": {
            "method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4}}))
    return out


def knob_of(settings: dict[str, Any]) -> str:
    """The engine argument a trial's settings change (its first key; the rest is what it needs)."""
    return next(iter(settings)).rsplit(".", 1)[-1]


def further(t: TrialResult, base: dict[str, Any], gpu: bool, rows: int) -> tuple[str, dict[str, Any]] | None:
    """One more step the same way for a doubled or halved knob that beat the profile (on an H200,
    ``max_num_seqs`` 1,024 ran at 1.04x the profile's 512 for a 135M model: the gain may go on);
    none past the sample's ``rows`` sequences, which would run the same trial again. (A trial of
    more sequences than half its rows runs them in one wave, whose ramp and drain understate it: a
    gain it still shows is no artefact.)"""
    for knob in SIZES:
        value, was = t.settings.get(f"engine.{knob}"), base_value(knob, base)
        if isinstance(value, int) and value != was and next(iter(t.settings)) == f"engine.{knob}":
            step = value * 2 if value > was else value // 2
            if step < 1 or (knob == "max_num_seqs" and not judged(step, rows)):
                return None
            return sized(knob, step, base, gpu)
    return None


def judged(seqs: int, rows: int) -> bool:
    """Whether a sample of ``rows`` rows can judge ``seqs`` sequences at once: it must run at least two
    engine-fulls, or its ramp and drain (one wave) understate the setting."""
    return rows >= 2 * seqs


def combined(trials: list[TrialResult], profile: TrialResult) -> dict[str, Any] | None:
    """The best value of each knob that beat the profile, together; None if fewer than two did. A
    trial's first setting names its knob; the rest are what the knob needs (larger CUDA graphs)."""
    best: dict[str, TrialResult] = {}
    for t in trials:
        if not t.ok or t.output_tok_s <= profile.output_tok_s or not t.settings:
            continue
        knob = next(iter(t.settings))
        if knob not in best or t.output_tok_s > best[knob].output_tok_s:
            best[knob] = t
    return {k: v for t in best.values() for k, v in t.settings.items()} if len(best) > 1 else None


def cost_s(t: TrialResult | None) -> float:
    """What a trial took of the budget, and so what its re-run will take at most (its engine's
    compiled graphs are cached by then); 30 s for one not yet run. On an H200 a trial's process
    took about 5 s more than its engine start and generation."""
    if t is None:
        return 30.0
    return max(t.wall_s, t.start_s + t.generation_s, 0.0 if t.ok else 30.0)


def tune(job: JobSpec, base: dict[str, Any], gpu: bool, rows: int, scratch: Path, budget_s: float,
         trial_limit_s: float, say: Callable[[str], None], only: tuple[str, ...] = (),
         fp8: dict[str, Any] | None = None) -> TuneResult:
    """The sweep; ``only``: the knobs to try (engine argument names, as ``knob_of`` gives), all if
    empty; ``fp8``: an fp8 KV cache's trial settings (``trials.fp8_kv_settings``)."""
    result = TuneResult()
    deadline = time.monotonic() + budget_s

    def run(name: str, settings: dict[str, Any], left: float) -> TrialResult:
        t = run_trial(job, name, settings, rows, scratch, min(trial_limit_s, max(1.0, left)), TRIAL_PASSES)
        say(f"{name}: " + (f"{t.output_tok_s:,.1f} output tok/s" if t.ok else f"failed: {t.error}"))
        return t

    def trial(name: str, settings: dict[str, Any], reserve_s: float) -> TrialResult | None:
        """Run it if it fits, at the cost of the longest trial so far, with ``reserve_s`` after it."""
        left = deadline - time.monotonic()
        longest = max([30.0] + [cost_s(t) for t in result.trials])
        if left < longest + reserve_s:
            say(f"skipped {name}: {left:.0f} s left of the budget")
            return None
        return run(name, settings, left)

    profile = trial(PROFILE, {}, 2 * 30.0)
    if profile is None or not profile.ok:
        result.trials += [profile] if profile else []
        return result
    result.trials.append(profile)
    if profile.generation_s < SHORT_TRIAL_S:
        say(f"note: the profile's trial generated for {profile.generation_s:.0f} s a pass; on an H200, passes that "
            f"short of one setting differed by up to 1.57x (see the passes column): a larger --rows measures longer")

    def sweep_trial(name: str, settings: dict[str, Any]) -> TrialResult | None:
        # room for it and, should it lead, for the re-runs of the profile and of it
        longest = max(cost_s(t) for t in result.trials)
        if (t := trial(name, settings, cost_s(profile) + longest)) is not None:
            result.trials.append(t)
        return t

    sample = profile.requests or rows  # the rows a trial runs: the input may have fewer than --rows
    for name, settings in knobs(base, gpu, fp8):
        if only and knob_of(settings) not in only:
            continue
        if knob_of(settings) == "max_num_seqs" and not judged(settings["engine.max_num_seqs"], sample):
            say(f"skipped {name}: a trial of it needs {2 * settings['engine.max_num_seqs']:,} rows, twice its "
                f"sequences (the sample has {sample:,}; --rows sets it)")
            continue
        before, t = profile, sweep_trial(name, settings)
        while (t is not None and t.ok and t.output_tok_s > before.output_tok_s
               and (step := further(t, base, gpu, sample))):
            before, t = t, sweep_trial(*step)  # it helped: one more step the same way, while it still helps
    if together := combined(result.trials, profile):
        sweep_trial("best together", together)
    candidate = max((t for t in result.trials if t.ok), key=lambda t: t.output_tok_s)
    if candidate is profile:
        return result
    result.candidate = candidate
    # Both re-runs or neither: one alone confirms nothing.
    left = deadline - time.monotonic()
    if left < cost_s(profile) + cost_s(candidate):
        say(f"skipped the re-runs: {left:.0f} s left of the budget; {candidate.name} led the sweep unconfirmed")
        return result
    result.recheck = [run(f"{t.name} (re-run)", t.settings, deadline - time.monotonic()) for t in (profile, candidate)]
    again_profile, again_candidate = result.recheck
    if beats((candidate, again_candidate), (profile, again_profile)):
        result.best, result.gain = candidate, again_candidate.output_tok_s / again_profile.output_tok_s
    return result


def beats(runs: tuple[TrialResult, ...], profile_runs: tuple[TrialResult, ...]) -> bool:
    """Each run of a setting faster than each of the profile's: on an H200, two one-pass trials of one
    setting differed by 1.57x, so a lead that one of the four runs contradicts is noise."""
    return all(t.ok for t in runs + profile_runs) and (
        min(t.output_tok_s for t in runs) > max(t.output_tok_s for t in profile_runs))


def spread(t: TrialResult) -> str:
    """The slowest and fastest of a trial's passes, so that a reader sees how far one pass can stray."""
    return f"{min(t.passes):,.0f}-{max(t.passes):,.0f}" if len(t.passes) > 1 else "-"


def table(result: TuneResult) -> str:
    head = (f"{'trial':<34} {'output tok/s':>12} {'passes':>15} {'total tok/s':>12} {'cache hit':>9} "
            f"{'GPU peak GB':>11}")
    lines = [head]
    for t in result.trials + result.recheck:
        if not t.ok:
            lines.append(f"{t.name:<34} failed: {t.error}")
            continue
        gpu = f"{t.gpu_memory_peak_gb:.1f}" if t.gpu_memory_peak_gb is not None else "-"
        lines.append(f"{t.name:<34} {t.output_tok_s:>12,.1f} {spread(t):>15} {t.total_tok_s:>12,.1f} "
                     f"{t.cache_hit_rate:>9.1%} {gpu:>11}")
    return "\n".join(lines)


def recommendation(result: TuneResult) -> str:
    if result.best is None and result.candidate is not None and not result.recheck:
        return (f"best: the job's settings as they are: {result.candidate.name} led the sweep, but the budget left "
                f"no room to re-run it against them (a longer --budget checks it)")
    if result.best is None and result.candidate is not None and len(result.recheck) == 2:
        (profile, *_), (again_profile, again) = result.trials, result.recheck
        return (f"best: the job's settings as they are (no trial beat them in both its runs): "
                f"{result.candidate.name} ran at {result.candidate.output_tok_s / profile.output_tok_s:.2f}x them in "
                f"the sweep and {again.output_tok_s / again_profile.output_tok_s:.2f}x on the re-run")
    if result.best is None:
        return "best: the job's settings as they are (no trial beat them in both its runs)"
    sets = " ".join(f"--set {k}={json.dumps(v) if isinstance(v, dict) else v}" for k, v in result.best.settings.items())
    fragment: dict[str, Any] = {}
    for key, value in result.best.settings.items():
        target = fragment
        *parents, last = key.split(".")
        for p in parents:
            target = target.setdefault(p, {})
        target[last] = value
    return (f"best: {result.best.name}, {result.gain:.2f}x the job's settings on a re-run\n"
            f"  {sets}\n  in the job file:\n" + "\n".join(
                "    " + line for line in yaml.safe_dump(fragment, sort_keys=False).splitlines()))
