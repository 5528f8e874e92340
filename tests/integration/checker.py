# SPDX-License-Identifier: MIT
"""The checker: knows every (profile, attribute, value, version) the test fed in,
reads the fake Target's request log and final state, and counts what was lost,
unexpected, duplicated, or regressed (an older value applied after a newer one)."""

APPLIED = ("accepted", "dropped after applying", "garbage after applying")


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
