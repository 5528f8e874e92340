# SPDX-License-Identifier: MIT
"""The checker: knows every (profile, attribute, value, version) the test fed in,
reads the fake Target's request log and final state, and counts what was lost,
unexpected, duplicated, or regressed (an older value applied after a newer one)."""

APPLIED = ("accepted", "dropped after applying", "garbage after applying")


def feed_file(spool, feed, version, rnd, rows=40, profiles=300):
    """Writes spool/fVVVVV.csv: rows random profiles (of profiles) with a tier
    and a city unique to this version and row, noted in feed. Returns the
    file's name and text (to feed it again elsewhere)."""
    import os
    from harness import csv_text, write_atomic
    out = []
    for i in range(rows):
        p = f"p{rnd.randrange(profiles):0{max(4, len(str(profiles - 1)))}d}"
        tier, city = f"t{version}-{i}", f"c{version}-{i}"
        out.append([p, tier, city])
        feed.add(version, p, "tier", tier)
        feed.add(version, p, "city", city)
    name = f"f{version:05d}.csv"
    text = csv_text(["customer_id", "tier", "city"], out)
    write_atomic(os.path.join(spool, name), text)
    return name, text


class Feed:
    def __init__(self):
        self.version = {}  # (profile, attr, value) -> version
        self.latest = {}   # (profile, attr) -> (version, value)

    def add(self, version, profile, attr, value):
        self.version[(profile, attr, value)] = version
        old = self.latest.get((profile, attr))
        if not old or old[0] <= version:
            self.latest[(profile, attr)] = (version, value)

    def truth(self):
        out = {}
        for (p, a), (_, v) in self.latest.items():
            out.setdefault(p, {})[a] = v
        return out


def check(feed, requests, final):
    """Returns a dict of counts; lost and regressions must be 0 for a pass."""
    lost = [(p, a, v) for (p, a), (_, v) in feed.latest.items() if final.get(p, {}).get(a) != v]
    unexpected, applied_count, regressions = [], {}, []
    high = {}
    for r in sorted(requests, key=lambda r: r["seq"]):
        if r.get("outcome") not in APPLIED:
            continue
        for row in r["data"]:
            for a, v in row["attrs"].items():
                key = (row["id"], a, v)
                if key not in feed.version:
                    unexpected.append(key)
                    continue
                applied_count[key] = applied_count.get(key, 0) + 1
                ver = feed.version[key]
                if ver < high.get((row["id"], a), -1):
                    regressions.append((key, ver, high[(row["id"], a)]))
                high[(row["id"], a)] = max(ver, high.get((row["id"], a), -1))
    duplicated = sum(n - 1 for n in applied_count.values() if n > 1)
    return {"lost": lost, "unexpected": unexpected, "duplicated": duplicated, "regressions": regressions}
