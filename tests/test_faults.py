"""Fault injection with real parts: the local feed, the local S3 endpoint, the collector as a subprocess,
real signals. Each test names the fault it proves."""

import socket
import time

import pytest

from collector.spool import unshipped
from sandbox.verify import Landing, check_bucket
from tests.conftest import BUCKET, landed, on_both_s3_servers, wait_until
from tests.s3_faults import S3Faults

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@on_both_s3_servers
def test_sigkill_mid_file_then_restart_delivers_everything_received(
        feed, s3, start_collector, spool_dir, manifest_schema):
    """1. Crash: received data is on disk within a second and the next start ships it, once."""
    first = start_collector(ws_url=feed.feed.url, rotate_seconds=60)
    first.wait_for_log("connected")
    time.sleep(2)
    feed.feed.silent = True  # whatever was sent is now received
    time.sleep(1.2)
    assert [p.suffix for p in spool_dir.iterdir()] == [".jsonl"], "a file was open when the kill came"
    first.kill()
    sent_before_kill = feed.call(feed.feed.sent_ids, "BTCUSDT")
    feed.feed.silent = False

    second = start_collector(ws_url=feed.feed.url)
    second.wait_for_log("spool: recovered 1 file(s) from a previous run")
    second.wait_for_log("uploaded s3://", count=4)
    assert second.terminate() == 0
    landing = landed(s3, feed, ("BTCUSDT",), manifest_schema)
    ids = landing.ids("BTCUSDT")
    assert sent_before_kill <= set(ids)
    assert len(ids) == len(set(ids)), "nothing shipped twice"


@on_both_s3_servers
def test_s3_down_for_30_seconds_then_back_loses_nothing(feed, s3, start_collector, manifest_schema):
    """2. S3 unavailable: uploads stay queued on disk and are retried; collection goes on."""
    collector = start_collector(ws_url=feed.feed.url)
    collector.wait_for_log("uploaded s3://", count=2)
    s3.stop()
    try:
        collector.wait_for_log("upload failed, kept on disk", timeout=20)
        time.sleep(30)
        assert collector.proc.poll() is None
    finally:
        s3.start()
    uploads_before = collector.log.count("uploaded s3://")
    # The backlog moves within a few seconds of S3 answering again, not at the next scheduled retry.
    wait_until(lambda: collector.log.count("uploaded s3://") > uploads_before, 10, "the first upload after the outage")
    rotated = collector.log.count("rotated BTCUSDT")
    wait_until(lambda: collector.log.count("uploaded s3://") >= 2 * rotated, 90, "the backlog to ship")
    assert collector.terminate() == 0
    landed(s3, feed, ("BTCUSDT",), manifest_schema)


def test_disk_budget_stops_receiving_keeps_data_and_resumes(feed, s3, start_collector, spool_dir, manifest_schema):
    """4. Disk budget: never delete unshipped data; stop receiving at the budget, resume after shipping."""
    feed.feed.rate = 2000
    with S3Faults(s3.endpoint) as faults:
        faults.reject_puts = -1  # S3 refuses everything
        collector = start_collector(ws_url=feed.feed.url, endpoint=faults.url, spool_max_bytes=150_000,
                                    upload_attempts=1)
        collector.wait_for_log("stopped receiving until S3 catches up", timeout=30)
        wait_until(lambda: feed.feed.connection_count() == 0, 10, "the connection to close")
        def stems() -> set[str]:  # a JSONL that is sealed meanwhile keeps its stem
            return {p.name.split(".")[0] for p in spool_dir.iterdir()}

        held = stems()
        time.sleep(2)
        assert held <= stems(), "unshipped files were deleted"
        faults.reject_puts = 0
        collector.wait_for_log("receiving again", timeout=60)
        wait_until(lambda: feed.feed.connection_count() == 1, 10, "the connection to reopen")
        time.sleep(1)
        assert collector.terminate() == 0
    landed(s3, feed, ("BTCUSDT",), manifest_schema)


def test_a_silent_dead_link_is_replaced(s3, start_collector):
    """5. Dead connection: no frames, no pings, no FIN; detected within twice the ping interval."""
    from sandbox.feed import FeedThread

    with FeedThread(rate=100, ping_interval=None) as feed:
        collector = start_collector(ws_url=feed.feed.url, ping_interval=1)
        collector.wait_for_log("connected")
        feed.call(feed.feed.go_silent)
        started = time.monotonic()
        collector.wait_for_log("disconnected: no frame for", timeout=10)
        assert time.monotonic() - started < 6  # 2 x ping interval, plus a tick and a loaded CI machine
        wait_until(lambda: feed.feed.handshakes >= 2, 10, "a new connection")
        assert collector.terminate() == 0


@pytest.mark.parametrize("server_pings", [0.5, None], ids=["binance-pings", "client-pings-answered"])
def test_a_quiet_but_healthy_link_is_not_reconnected(s3, start_collector, server_pings):
    """5. No trades for a while on a healthy link is not a reason to reconnect."""
    from sandbox.feed import FeedThread

    with FeedThread(rate=0, ping_interval=server_pings) as feed:
        collector = start_collector(ws_url=feed.feed.url, ping_interval=1)
        collector.wait_for_log("connected")
        time.sleep(5)
        assert feed.feed.handshakes == 1
        assert "disconnected" not in collector.log
        assert collector.terminate() == 0


def test_a_refused_location_is_logged_plainly_and_not_retried_in_a_loop(s3, start_collector):
    """6. HTTP 451 at the handshake."""
    from sandbox.feed import FeedThread

    with FeedThread(rate=100) as feed:
        feed.feed.refuse_status = 451
        collector = start_collector(ws_url=feed.feed.url)
        collector.wait_for_log("this location is refused by Binance (HTTP 451)")
        time.sleep(3)
        assert feed.feed.handshakes == 1
        assert collector.terminate() == 0


def test_reconnects_back_off_after_repeated_drops(feed, s3, start_collector):
    """6. Reconnect storms: the first delay as configured, then doubling with jitter."""
    collector = start_collector(ws_url=feed.feed.url, reconnect_delay=0.2)
    for n in range(1, 5):
        collector.wait_for_log("connected /ws", count=n, timeout=30)
        feed.call(feed.feed.drop_connections)
    collector.wait_for_log("reconnecting in", count=4)
    assert collector.terminate() == 0
    delays = [float(line.rsplit("reconnecting in ", 1)[1].split(" s")[0])
              for line in collector.log.splitlines() if "reconnecting in" in line]
    assert "disconnected: no close frame" in collector.log
    assert delays[0] == 0.2
    for n, delay in enumerate(delays[1:4], start=1):
        assert 0.2 * 2**n / 2 <= delay <= 0.2 * 2**n


@pytest.mark.parametrize("planned", ["lifetime", "serverShutdown"])
def test_planned_disconnects_hand_over_without_gap_or_duplicate(feed, s3, start_collector, manifest_schema, planned):
    """7. Open the new connection first, close the old one, join them by trade id."""
    settings = {"connection_lifetime": 2} if planned == "lifetime" else {}
    collector = start_collector(ws_url=feed.feed.url, **settings)
    collector.wait_for_log("connected")
    if planned == "serverShutdown":
        time.sleep(1)
        feed.call(feed.feed.announce_shutdown, close_after=1.0)
    collector.wait_for_log("handover done", count=2 if planned == "lifetime" else 1, timeout=20)
    time.sleep(1)
    assert collector.terminate() == 0
    landing = landed(s3, feed, ("BTCUSDT",), manifest_schema)
    ids = landing.ids("BTCUSDT")
    assert ids == list(range(ids[0], ids[-1] + 1)), "no gap, no duplicate, in order"
    assert sum(m["quality"]["reconnects"] for m in landing.manifests) >= 1
    assert all(m["quality"]["trade_id_gaps"] == 0 for m in landing.manifests)


def _landed_after(feed, s3, start_collector, manifest_schema, control, *args) -> tuple[Landing, str]:
    """The collector on the live feed while the feed does `control(*args)`: what landed (checked), and the log."""
    collector = start_collector(ws_url=feed.feed.url)
    collector.wait_for_log("connected")
    time.sleep(0.5)
    feed.call(control, *args)
    collector.wait_for_log("uploaded s3://", count=4)
    assert collector.terminate() == 0
    return landed(s3, feed, ("BTCUSDT",), manifest_schema), collector.log


def test_gaps_are_counted_and_logged_with_the_missing_range(feed, s3, start_collector, manifest_schema):
    """8. A jump in trade ids."""
    landing, log = _landed_after(feed, s3, start_collector, manifest_schema, feed.feed.skip_trades, "BTCUSDT", 37)
    assert sum(m["quality"]["trade_id_gaps"] for m in landing.manifests) == 1
    assert sum(m["quality"]["missing_trade_ids"] for m in landing.manifests) == 37
    assert "(37)" in log and "missing" in log


def test_a_replay_starts_a_new_file_and_is_kept_and_logged(feed, s3, start_collector, manifest_schema):
    """8b. Trades sent again: each file's ids still strictly increase (checked object by object by `landed`),
    the repeats are kept (at least once), and the log says where."""
    landing, log = _landed_after(feed, s3, start_collector, manifest_schema, feed.feed.replay_trades, "BTCUSDT", 25)
    ids = landing.ids("BTCUSDT")
    assert len(ids) - len(set(ids)) == 25
    assert all(m["quality"]["trade_id_gaps"] == 0 for m in landing.manifests), "a replay is not a gap"
    assert all(m["payload"]["last_trade_id"] - m["payload"]["first_trade_id"] + 1 == m["payload"]["record_count"]
               for m in landing.manifests), "every manifest's id range is exactly its records"
    assert "the server replayed trades; a new file starts here" in log


def test_bad_input_is_counted_kept_out_and_never_stops_the_collector(feed, s3, start_collector, manifest_schema):
    """9. Bad input of every kind, mixed into a live stream."""
    collector = start_collector(ws_url=feed.feed.url)
    collector.wait_for_log("connected")
    bad = ["not json", b"\x00\x01binary", '{"e":"trade","s":"BTCUSDT","t":1}', '{"result":null,"id":1}',
           '{"e":"trade","E":1,"s":"ETHUSDT","t":1,"T":1}', '{"e":"trade","x":"' + "a" * 20_000 + '"}']
    for message in bad:
        feed.call(feed.feed.send_raw, message)
    collector.wait_for_log("message rejected")
    collector.wait_for_log("uploaded s3://", count=4)
    assert collector.terminate() == 0
    landing = landed(s3, feed, ("BTCUSDT",), manifest_schema)
    assert sum(m["quality"]["malformed_messages"] for m in landing.manifests) == len(bad)
    assert all(line.startswith(b'{"e":"trade","E":') for line in landing.lines["BTCUSDT"])


def test_sigterm_while_s3_is_down_exits_0_in_time_and_keeps_the_files(
        feed, s3, start_collector, spool_dir, manifest_schema):
    """10. Shutdown: inside the stop timeout even when nothing can be shipped; the next start ships it."""
    dead_endpoint = f"http://127.0.0.1:{free_port()}"
    collector = start_collector(ws_url=feed.feed.url, endpoint=dead_endpoint, shutdown_timeout=3)
    collector.wait_for_log("upload failed", timeout=20)
    started = time.monotonic()
    assert collector.terminate() == 0
    assert time.monotonic() - started < 3 + 5
    assert "not shipped; they stay in" in collector.log
    assert any(p.name.endswith(".jsonl.gz") for p in spool_dir.iterdir())

    again = start_collector(ws_url=feed.feed.url)
    again.wait_for_log("spool: recovered")
    again.wait_for_log("uploaded s3://", count=4)
    assert again.terminate() == 0
    landed(s3, feed, ("BTCUSDT",), manifest_schema)
    assert unshipped(spool_dir) == []


def test_a_handover_whose_new_connection_dies_keeps_the_old_one(feed, s3, start_collector, manifest_schema):
    """7. A planned handover must not trade a working connection for a failing one."""
    collector = start_collector(ws_url=feed.feed.url, connection_lifetime=2)
    collector.wait_for_log("connected")
    feed.feed.new_connections_die_after = 0.5
    collector.wait_for_log("handover abandoned (new connection closed); keeping the old connection", timeout=20)
    feed.feed.new_connections_die_after = None
    collector.wait_for_log("handover done", timeout=30)
    time.sleep(1)
    assert collector.terminate() == 0
    landing = landed(s3, feed, ("BTCUSDT",), manifest_schema)
    ids = landing.ids("BTCUSDT")
    assert ids == list(range(ids[0], ids[-1] + 1)), "no gap, no duplicate across the failed and the good handover"


def test_a_spool_that_cannot_be_written_stops_with_status_1_and_its_manifests_count_only_what_reached_the_disk(
        feed, s3, start_collector, spool_dir, manifest_schema):
    """Disk errors do not heal by themselves: exit 1 so systemd restarts us. A file whose write failed is
    sealed from what it holds on disk, never from what was counted into it; the loss is logged."""
    import resource

    def small_files() -> None:  # writes past 40 kB fail with EFBIG (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))

    feed.feed.rate = 2000
    failing = start_collector(ws_url=feed.feed.url, rotate_seconds=30, preexec_fn=small_files)
    assert failing.wait(30) == 1
    assert "BTCUSDT: cannot write the spool: [Errno 27] File too large" in failing.log
    assert "stopping so that a restart recovers from the spool" in failing.log
    assert "counted into it reached the disk (a write failed)" in failing.log
    assert "trade(s) received could not be written: the spool failed" in failing.log
    assert "Traceback" not in failing.log
    landing = check_bucket(s3.client(), BUCKET)
    assert landing.objects and landing.problems == [], "every manifest describes exactly its object"

    again = start_collector(ws_url=feed.feed.url)
    again.wait_for_log("uploaded s3://", count=4)
    assert again.terminate() == 0
    assert unshipped(spool_dir) == []


def test_sigterm_with_s3_hanging_still_exits_inside_the_units_stop_timeout(feed, s3, start_collector, spool_dir):
    """10. An endpoint that accepts connections and never answers: every attempt waits out its timeouts, and
    the exit still comes within shutdown timeout + one attempt's connect and read timeouts (what the unit's
    TimeoutStopSec allows for)."""
    from collector.config import S3_CONNECT_TIMEOUT_SECONDS, S3_READ_TIMEOUT_SECONDS

    with socket.socket() as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(64)  # connections complete in the kernel; nothing ever reads or answers them
        endpoint = f"http://127.0.0.1:{blackhole.getsockname()[1]}"
        collector = start_collector(ws_url=feed.feed.url, endpoint=endpoint, shutdown_timeout=2)
        collector.wait_for_log("rotated BTCUSDT", count=2)
        started = time.monotonic()
        assert collector.terminate() == 0
        assert time.monotonic() - started < 2 + S3_CONNECT_TIMEOUT_SECONDS + S3_READ_TIMEOUT_SECONDS + 3
    assert "not shipped; they stay in" in collector.log
    assert any(p.name.endswith(".jsonl.gz") for p in spool_dir.iterdir())


def test_a_peer_that_keeps_sending_after_a_message_too_big_is_cut_and_replaced_promptly(feed, s3, start_collector):
    """6. The client fails the connection with 1009 and the peer never reads its close frame but keeps sending:
    bytes the protocol discards are not life, and the close it expects has a deadline."""
    from collector.ws_client import CLOSE_TIMEOUT_SECONDS, PROTOCOL_MAX_SIZE

    collector = start_collector(ws_url=feed.feed.url, reconnect_delay=0.1)
    collector.wait_for_log("connected /ws")
    time.sleep(0.5)
    feed.call(feed.feed.send_too_big_and_ignore_close, "BTCUSDT", PROTOCOL_MAX_SIZE + 1)
    started = time.monotonic()
    collector.wait_for_log("connected /ws", count=2, timeout=20)
    # The close deadline, a reconnect delay and a loaded machine: far below the 40 s of a silent link.
    assert time.monotonic() - started < CLOSE_TIMEOUT_SECONDS + 5
    uploads = collector.log.count("uploaded s3://")
    collector.wait_for_log("uploaded s3://", count=uploads + 2, timeout=20)
    assert collector.terminate() == 0
    log = collector.log
    assert "the connection failed: " in log and "exceeds limit" in log, "the parser's reason is logged"
    assert "disconnected: close timed out; reconnecting in" in log


def test_a_shutdown_notice_on_the_new_connection_during_a_handover_is_not_lost(
        feed, s3, start_collector, manifest_schema):
    """7. The server announces its shutdown to the new connection while the handover to it is under way: the
    new connection is handed over in turn before the server closes it, without a gap."""
    collector = start_collector(ws_url=feed.feed.url)
    collector.wait_for_log("connected")
    time.sleep(1)
    feed.feed.notice_next_connection = 3.0
    feed.call(feed.feed.announce_shutdown, close_after=3.0)
    collector.wait_for_log("handover done", count=2, timeout=20)
    time.sleep(4)  # past the moment the server closes the second connection
    assert collector.terminate() == 0
    log = collector.log
    assert "serverShutdown announced on the new connection, handing over again" in log
    assert "reconnecting in" not in log
    ids = landed(s3, feed, ("BTCUSDT",), manifest_schema).ids("BTCUSDT")
    assert ids == list(range(ids[0], ids[-1] + 1)), "no gap, no duplicate across both handovers"
