"""The audit for people (a table) and for machines (JSON). No I/O."""

from __future__ import annotations

from typing import Any

from audit.check import Audit
from audit.days import clock
from audit.entries import instance_order
from audit.ranges import Hole


def ordered_instances(audit: Audit) -> list[str]:
    """Replicas by id, the backfill last."""
    return sorted(audit.coverage.instances, key=instance_order)


def _duration(ms: int) -> str:
    seconds = ms // 1000
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _time(epoch_ms: int | None) -> str:
    return "unknown" if epoch_ms is None else clock(epoch_ms)


def describe_hole(hole: Hole) -> str:
    if hole.first is None and hole.last is None:
        return "no data for this day"
    if hole.first is None:
        return (f"open start: nothing is held before id {hole.last + 1} ({_time(hole.before_time)}); "
                "how many trades the day had before it is not known")
    if hole.last is None:
        return (f"open end: nothing is held after id {hole.first - 1} ({_time(hole.after_time)}); "
                "the day's later trades are not known (is the day over?)")
    return (f"ids {hole.first}..{hole.last} ({hole.ids} missing), "
            f"between {_time(hole.after_time)} and {_time(hole.before_time)}")


def _shortfall(holes: list[Hole]) -> list[str]:
    closed = [h for h in holes if h.ids is not None]
    said = [f"{len(closed)} hole(s), {sum(h.ids or 0 for h in closed)} ids missing"] if closed else []
    if any(h.first is None and h.last is None for h in holes):
        return ["no data for this day"]
    if any(h.first is None for h in holes):
        said.append("the day's start is not covered")
    if any(h.last is None for h in holes):
        said.append("the day's end is not covered")
    return said


def table(audit: Audit) -> str:
    cov = audit.coverage
    verdict = "COMPLETE" if audit.complete else "INCOMPLETE: " + ", ".join(_shortfall(cov.holes))
    out = [f"{audit.symbol} {audit.day} in s3://{audit.bucket}: {verdict}"]
    if cov.union:
        files = sum(inst.files for inst in cov.instances.values())
        out.append(f"ids {cov.first_id}..{cov.last_id} in the {files} files that reach into the day: "
                   f"{cov.unique_ids} held, {cov.records} records, {cov.duplicates_ratio:.2f} records per id")
    out.append("")
    out.append(f"{'instance':<24} {'files':>7} {'records':>11} {'ids held':>11} {'share':>7} "
               f"{'uptime':>9} {'own gaps':>8}")
    for name in ordered_instances(audit):
        inst = cov.instances[name]
        share = inst.ids / cov.unique_ids if cov.unique_ids else 0.0
        out.append(f"{name:<24} {inst.files:>7} {inst.records:>11} {inst.ids:>11} {share:>7.1%} "
                   f"{_duration(inst.uptime_ms):>9} {max(0, len(inst.spans) - 1):>8}")
    out.append(f"{'union':<24} {'':>7} {'':>11} {cov.unique_ids:>11}")
    if cov.holes:
        out.append("")
        out.append("held by no replica:")
        out += ["  " + describe_hole(h) for h in cov.holes]
    out.append("")
    out.append(f"manifests: {audit.manifests_listed} listed, {len(audit.rejected)} not believed")
    out += [f"  {key}: {'; '.join(why)}" for key, why in sorted(audit.rejected.items())]
    if audit.orphans:
        out.append(f"data objects without a manifest: {len(audit.orphans)}")
        out += [f"  {key}" for key in audit.orphans]
    if audit.read_for_gaps:
        out.append(f"data objects read to locate gaps inside them: {len(audit.read_for_gaps)}")
    if audit.verified is not None:
        out.append(f"verify: {audit.verified} data objects re-checked against their manifests, "
                   f"{len(audit.mismatches)} mismatch(es)")
    elif audit.mismatches:
        out.append(f"data objects that do not match their manifests: {len(audit.mismatches)}")
    out += [f"  {key}: {'; '.join(why)}" for key, why in sorted(audit.mismatches.items())]
    out.append(f"took {audit.seconds:.1f} s")
    return "\n".join(out)


def as_json(audit: Audit) -> dict[str, Any]:
    cov = audit.coverage
    return {
        "bucket": audit.bucket, "symbol": audit.symbol, "date": audit.day.isoformat(),
        "complete": audit.complete,
        "first_trade_id": cov.first_id, "last_trade_id": cov.last_id,
        "unique_ids": cov.unique_ids, "records": cov.records,
        "duplicates_ratio": round(cov.duplicates_ratio, 4),
        "instances": {
            name: {"files": inst.files, "records": inst.records, "ids": inst.ids, "uptime_ms": inst.uptime_ms,
                   "ranges": [s._asdict() for s in inst.spans]}
            for name, inst in ((n, cov.instances[n]) for n in ordered_instances(audit))
        },
        "union": [s._asdict() for s in cov.union],
        "holes": [h._asdict() for h in cov.holes],
        "manifests_listed": audit.manifests_listed,
        "rejected_manifests": audit.rejected,
        "orphan_data_objects": audit.orphans,
        "read_for_gaps": audit.read_for_gaps,
        "verified": audit.verified,
        "mismatches": audit.mismatches,
        "seconds": round(audit.seconds, 3),
    }


_VOUCHED = {"replicas": "by 2+ replicas", "replica_and_exchange": "by 1 replica + the exchange",
            "exchange": "by the exchange alone", "majority": "by a majority of replicas (exchange not asked)",
            "uncorroborated": "uncorroborated"}


def curated(doc: dict[str, Any], seconds: float) -> str:
    """What `compact` made of the day, from its manifest."""
    p, c, q = doc["payload"], doc["corroboration"], doc["quality"]
    uncorroborated = sum(run["last"] - run["first"] + 1 for run in c["uncorroborated"])
    if doc["complete"]:
        state = "complete"
    else:
        state = f"INCOMPLETE, {len(doc['holes'])} hole(s), {uncorroborated} uncorroborated id(s)"
    counts = ", ".join(f"{n} {_VOUCHED[how]}" for how, n in c["counts"].items() if n)
    ex = c["exchange"]
    lines = [f"compact: s3://{p['bucket']}/{p['key']}: {p['record_count']} trades, ids {p['first_trade_id']}.."
             f"{p['last_trade_id']}, {state}; {q['duplicates_dropped']} duplicates dropped, in {seconds:.1f} s",
             f"  corroborated ({c['mode']}): {counts or 'no trades'}; {c['disagreements_total']} disagreement(s); "
             f"exchange asked about {ex['ids_asked']} id(s) in {ex['calls']} call(s) ({ex['weight']} weight)"]
    if ex["unreachable"]:
        lines.append(f"  the exchange could not be asked: {ex['unreachable']}")
    lines += [f"  {describe_hole(Hole(**hole))}" for hole in doc["holes"]]
    lines += [f"  ids {run['first']}..{run['last']}: uncorroborated" for run in c["uncorroborated"]]
    lines += [f"  overruled: {instance} lost on {n} id(s)" for instance, n in c["overruled"].items()]
    lines += [f"  left out: {d['key']}: {d['reason']}" for d in q["damaged_objects"]]
    return "\n".join(lines)
