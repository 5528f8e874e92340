# SPDX-License-Identifier: MIT
"""target.oauth against the fake's IMS and Admin API (over TLS): delivery runs
across several renewals of short-lived tokens without a refused call; a
wrong client secret holds delivery back with a clear status until it is
fixed; a token another user of the account replaced is picked up with GET,
without making a new one; secrets and tokens never reach the log or status."""
import json
import os
import random
import time
import urllib.request

from checker import Feed
from harness import csv_text, over_tls, run, wait_for, write_atomic

SECRET = "s3cr3t-p4ss+/=word"


def oauth_config(case, secret_file, renew_before="2s"):
    return (f"  oauth:\n    client_id: tpsync-test-client\n    client_secret_file: {secret_file}\n"
            f"    tenant: acme\n    ims_url: {case.target.url}/ims/token/v3\n    admin_url: {case.target.url}\n"
            f"    renew_before: {renew_before}\n")


def fake_oauth(case, ims_ttl_ms=8000, token_ttl_ms=6000, secret=SECRET):
    case.target.configure(oauth={"client_id": "tpsync-test-client", "secret": secret, "tenant": "acme",
                                 "ims_ttl_ms": ims_ttl_ms, "token_ttl_ms": token_ttl_ms})


def write_secret(case, secret):
    path = os.path.join(case.dir, "oauth-secret")
    with open(path, "w") as f:
        f.write(secret + "\n")
    os.chmod(path, 0o600)
    return path


def oauth_state(case):
    return case.target._call("/__oauth")


def feed_file(case, feed, version, rnd):
    rows = []
    for i in range(30):
        p = f"p{rnd.randrange(400):03d}"
        rows.append([p, f"t{version}-{i}"])
        feed.add(version, p, "tier", f"t{version}-{i}")
    write_atomic(os.path.join(case.spool, f"f{version:04d}.csv"), csv_text(["customer_id", "tier"], rows))


def no_secrets(case, d):
    text = d.log_text() + json.dumps(d.status())
    assert SECRET not in text, "the client secret leaked"
    token = oauth_state(case).get("token")
    assert not token or token not in text, "a profile API token leaked"
    assert "ims-" not in text, "an IMS token leaked"


@over_tls
def test_delivery_across_renewals(case):
    fake_oauth(case)
    d = case.daemon(target_extra=oauth_config(case, write_secret(case, SECRET)), linger="50ms").start()
    rnd = random.Random(3)
    feed = Feed()
    # 20 s of files: tokens live 6 s, so at least 4 renewals happen meanwhile.
    for v in range(1, 41):
        feed_file(case, feed, v, rnd)
        time.sleep(0.5)
    wait_for(lambda: case.target.profiles() == feed.truth(), 60, "Target to reach the final state", interval=0.3)
    d.wait_idle(30)
    st = case.target.state()
    o = oauth_state(case)
    assert o["posts"] >= 4, o
    assert st["auth_failures"] == 0 and o["expired_uses"] == 0, (st["auth_failures"], o)
    assert d.sql("SELECT count(*) FROM dead_letters") == [(0,)]
    assert d.sql("SELECT count(*) FROM batches WHERE state NOT IN ('complete')") == [(0,)]
    assert st["violations"] == []
    s = d.status()
    assert s["oauth"]["tokens_made"] >= 4 and s["oauth"]["has_token"], s["oauth"]
    assert "made a new profile API token through the Admin API" in d.log_text()
    no_secrets(case, d)
    print(f"    {o['posts']} tokens made, {o['gets']} read, {o['grants']} IMS grants; 0 calls refused")


@over_tls
def test_wrong_secret_holds_delivery(case):
    fake_oauth(case)
    secret_file = write_secret(case, "not-the-secret")
    d = case.daemon(target_extra=oauth_config(case, secret_file), retry_max="500ms").start()
    write_atomic(os.path.join(case.spool, "a.csv"), csv_text(["customer_id", "tier"], [["c1", "gold"]]))

    def held():
        dl = d.status()["delivery"]
        return "Adobe IMS refused the client credentials" in (dl.get("held_back_by") or "") and dl
    dl = wait_for(held, 20, "the status to say why")
    assert "HTTP 401: invalid_client" in dl["held_back_by"], dl
    assert case.target.profiles() == {}
    assert case.target.state()["submissions"] == 0
    # Fixed and reloaded: the token comes, the change goes.
    write_secret(case, SECRET)
    d.ctl("reload")
    wait_for(lambda: case.target.profiles().get("c1") == {"tier": "gold"}, 30, "delivery after the fix")
    no_secrets(case, d)


@over_tls
def test_token_replaced_by_another_user(case):
    fake_oauth(case, ims_ttl_ms=600000, token_ttl_ms=600000)
    d = case.daemon(target_extra=oauth_config(case, write_secret(case, SECRET), renew_before="1m")).start()
    write_atomic(os.path.join(case.spool, "a.csv"), csv_text(["customer_id", "tier"], [["c1", "gold"]]))
    wait_for(lambda: case.target.profiles().get("c1") == {"tier": "gold"}, 30, "first delivery")
    d.wait_idle(30)
    before = oauth_state(case)
    assert before["posts"] == 1, before
    # Another tool of the account makes a new token (ours stops working).
    ims = urllib.request.Request(f"{case.target.url}/ims/token/v3", method="POST",
                                 data=f"grant_type=client_credentials&client_id=tpsync-test-client&client_secret="
                                      f"{urllib.request.quote(SECRET, safe='')}".encode())
    with urllib.request.urlopen(ims, context=case.target.context) as r:
        ims_token = json.loads(r.read())["access_token"]
    post = urllib.request.Request(f"{case.target.url}/acme/target/authentication/token?authorizationScope=profile_api",
                                  method="POST", data=b"", headers={"Authorization": f"Bearer {ims_token}",
                                                                    "X-Api-Key": "tpsync-test-client"})
    with urllib.request.urlopen(post, context=case.target.context) as r:
        assert json.loads(r.read())["accessToken"]
    write_atomic(os.path.join(case.spool, "b.csv"), csv_text(["customer_id", "tier"], [["c1", "silver"]]))
    wait_for(lambda: case.target.profiles().get("c1") == {"tier": "silver"}, 30, "delivery with the other token")
    after = oauth_state(case)
    # One 401, then GET found the other user's token: no new one was made.
    assert after["posts"] == before["posts"] + 1, (before, after)  # only the other user's POST
    assert after["gets"] > before["gets"]
    assert case.target.state()["auth_failures"] >= 1
    assert d.sql("SELECT count(*) FROM dead_letters") == [(0,)]
    assert "Target refused the profile API token; renewing it" in d.log_text()
    no_secrets(case, d)


if __name__ == "__main__":
    run([test_delivery_across_renewals, test_wrong_secret_holds_delivery, test_token_replaced_by_another_user])
