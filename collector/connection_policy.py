"""When one symbol's stream connects, pings, hands over, switches, gives up and backs off. No I/O.

A state machine in the manner of websockets' sans-I/O `protocol.py`: the asyncio shell (`ws_client.py`) feeds
it events (a connect granted by the budget, a link opened or failed, messages from a link, a link closed, a
tick with the time passed in, pause/resume/stop) and carries out the actions each event returns. Links are
named by numbers the policy hands out with `OpenLink`.

The common case, trades on the one link in service with no handover under way, never reaches the policy:
the shell delivers them straight to the sink while `direct` names that link.
"""

from __future__ import annotations

import enum
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass

from collector.backoff import (
    RECONNECT_CAP_SECONDS,
    REFUSED_LOCATION_DELAY_SECONDS,
    STABLE_CONNECTION_SECONDS,
    Backoff,
)
from collector.connect_budget import Kind
from collector.frames import Notice, Parsed, Rejected, Trade
from collector.handover import Handover, planned_lifetime

log = logging.getLogger("collector.ws")

# How long a new connection may take to overlap the old one before the old one is closed anyway.
HANDOVER_TIMEOUT_SECONDS = 10.0


class Failure(enum.Enum):
    """Why an attempt to open a link failed."""

    REFUSED = "location refused"  # HTTP 451/403: Binance serves no one from here
    RATE_LIMITED = "rate limited"  # HTTP 429/418: the connection budget holds every attempt back
    ERROR = "error"  # network error, timeout, any other handshake failure


# actions


@dataclass(frozen=True, slots=True)
class RequestConnect:
    """Ask the connection budget for one attempt; answer with `granted` when it allows it."""

    kind: Kind


@dataclass(frozen=True, slots=True)
class Withdraw:
    """The attempt asked for is no longer wanted."""


@dataclass(frozen=True, slots=True)
class OpenLink:
    """Open a new link named `link`; answer with `opened` or `failed`, and later `closed`."""

    link: int


@dataclass(frozen=True, slots=True)
class Ping:
    link: int


@dataclass(frozen=True, slots=True)
class Switch:
    """`link` is now the link in service."""

    link: int


@dataclass(frozen=True, slots=True)
class Close:
    """Close `link` politely (the link cuts the transport if the peer does not finish in time)."""

    link: int
    reason: str


@dataclass(frozen=True, slots=True)
class Abort:
    """Cut `link` at once."""

    link: int
    reason: str


@dataclass(frozen=True, slots=True)
class Deliver:
    trades: list[Trade]


@dataclass(frozen=True, slots=True)
class Reject:
    """A message that is not a trade: counted and logged by the sink."""

    reason: str


@dataclass(frozen=True, slots=True)
class Reconnected:
    """A link after the first one opened: counted in the manifests' quality."""


@dataclass(frozen=True, slots=True)
class Gap:
    """The trades that follow may not continue the ones delivered before (the exact id range is found by
    the sink from the ids themselves)."""

    reason: str


Action = RequestConnect | Withdraw | OpenLink | Ping | Switch | Close | Abort | Deliver | Reject | Reconnected | Gap


class Phase(enum.Enum):
    WAITING = "waiting"  # for `retry_at`, then asks for an attempt
    REQUESTED = "requested"  # for the budget's grant
    CONNECTING = "connecting"
    SERVING = "serving"
    PAUSED = "paused"
    STOPPED = "stopped"


class HandoverStep(enum.Enum):
    REQUESTED = "requested"
    CONNECTING = "connecting"
    OVERLAP = "overlap"


class ConnectionPolicy:
    """One symbol's connection policy. Every event takes the time (`now`, a monotonic clock) and returns the
    actions to carry out, in order."""

    def __init__(self, *, symbol: str, reconnect_delay: float, ping_interval: float, connection_lifetime: float,
                 rng: random.Random) -> None:
        self.symbol = symbol
        self.ping_interval = ping_interval
        self.connection_lifetime = connection_lifetime
        self.rng = rng
        self.backoff = Backoff(first=reconnect_delay, cap=RECONNECT_CAP_SECONDS, rng=rng)
        self.phase = Phase.WAITING
        self.retry_at = 0.0
        self.connecting: int | None = None
        # The link in service, since when, and when (and why) its planned handover is due.
        self.serving: int | None = None
        self.serving_since = 0.0
        self.handover_at = float("inf")
        self.handover_why = ""
        # A handover under way: its step, the new link, the join by trade id, the end of the overlap wait, and
        # whether a `serverShutdown` notice came on the new link before it took over.
        self.step: HandoverStep | None = None
        self.candidate: int | None = None
        self.handover: Handover | None = None
        self.overlap_until = float("inf")
        self.candidate_noticed = False
        # The link in service when we paused or stopped: its last trades are still delivered while it closes
        # (past `resume_after`, like the link in service).
        self.draining: int | None = None
        # After a handover: trades up to this id were delivered already (from the other link), and the link
        # in service skips them.
        self.resume_after: int | None = None
        # Other links being closed, with how many trades each brought meanwhile (counted, not delivered).
        self.stale: dict[int, int] = {}
        self._named = 0
        self._opened = 0

    @property
    def direct(self) -> int | None:
        """The link whose trades go straight to the sink: in service, with no handover under way."""
        return self.serving if self.step is None and self.resume_after is None else None

    @property
    def finished(self) -> bool:
        """Stopped, and every link is closed."""
        return (self.phase is Phase.STOPPED and self.serving is None and self.candidate is None
                and self.connecting is None and self.draining is None and not self.stale)

    def next_tick(self, now: float) -> float:
        """When `tick` is next wanted (it may come earlier)."""
        if self.phase is Phase.WAITING:
            return self.retry_at
        if self.phase is not Phase.SERVING:
            return float("inf")
        due = now + self.ping_interval / 2
        if self.step is None:
            return min(due, self.handover_at)
        if self.step is HandoverStep.OVERLAP:
            return min(due, self.overlap_until)
        return due

    # events

    def start(self, now: float) -> list[Action]:
        return self.tick(now, {})

    def tick(self, now: float, heard: Mapping[int, float]) -> list[Action]:
        """Time has passed; `heard` holds when each open link last had a frame accepted by its protocol
        (pongs included), which is what liveness is measured from."""
        if self.phase is Phase.WAITING:
            if now < self.retry_at:
                return []
            self.phase = Phase.REQUESTED
            return [RequestConnect(Kind.FIRST if self._opened == 0 else Kind.RECONNECT)]
        if self.phase is not Phase.SERVING:
            return []
        link = self.serving
        assert link is not None
        silent = now - heard.get(link, now)
        if silent > 2 * self.ping_interval:
            reason = f"no frame for {silent:.0f} s"
            self.stale[link] = 0
            return [Abort(link, reason), *self._serving_gone(now, reason)]
        actions: list[Action] = [Ping(link)] if silent > self.ping_interval else []
        if self.step is None and now >= self.handover_at:
            self.step = HandoverStep.REQUESTED
            actions.append(RequestConnect(Kind.HANDOVER))
        elif self.step is HandoverStep.OVERLAP and now >= self.overlap_until:
            actions += self._end_overlap(now, timed_out=True)
        return actions

    def granted(self, now: float, last_trade_id: int | None) -> list[Action]:
        """The budget allows the attempt asked for; `last_trade_id` is the last id the sink took."""
        if self.phase is Phase.REQUESTED:
            self._named += 1
            self.phase, self.connecting = Phase.CONNECTING, self._named
            return [OpenLink(self._named)]
        if self.step is HandoverStep.REQUESTED:
            self._named += 1
            log.info("%s: handing over (%s): opening the new connection before closing the old one",
                     self.symbol, self.handover_why)
            self.step, self.candidate, self.candidate_noticed = HandoverStep.CONNECTING, self._named, False
            self.handover = Handover(last_trade_id)
            return [OpenLink(self._named)]
        return []

    def opened(self, link: int, now: float) -> list[Action]:
        actions: list[Action] = []
        if link == self.connecting:
            self.connecting = None
            self._count_open(actions)
            self.phase = Phase.SERVING
            self._serve(link, now)
            actions += self._release_held()
            actions.append(Switch(link))
            self._notice_carried(actions)
        elif link == self.candidate and self.step is HandoverStep.CONNECTING:
            self._count_open(actions)
            self.step, self.overlap_until = HandoverStep.OVERLAP, now + HANDOVER_TIMEOUT_SECONDS
            assert self.handover is not None
            if self.handover.joined:
                actions += self._end_overlap(now)
        return actions

    def failed(self, link: int, now: float, failure: Failure, detail: str) -> list[Action]:
        """Opening `link` failed; it is closed, or being closed."""
        if link == self.connecting:
            self.connecting = None
            self.phase = Phase.WAITING
            self.handover = None
            if failure is Failure.REFUSED:
                delay = REFUSED_LOCATION_DELAY_SECONDS
                log.error("%s: this location is refused by Binance (%s); deploy to another region or set "
                          "COLLECTOR_WS_URL; retrying in %.0f s", self.symbol, detail, delay)
            elif failure is Failure.RATE_LIMITED:
                delay = 0.0  # the budget holds every attempt back for the Retry-After, and logs it once
                log.debug("%s: connect refused (%s)", self.symbol, detail)
            else:
                delay = self.backoff.next()
                log.warning("%s: connect failed (%s); retrying in %.1f s", self.symbol, detail, delay)
            self.retry_at = now + delay
            # Trades may have come with the handshake's answer before the link failed.
            return [Gap(f"connect failed: {detail}"), *self.tick(now, {})]
        if link == self.candidate and self.step is HandoverStep.CONNECTING:
            log.warning("%s: handover abandoned (new connection failed: %s); keeping the old connection",
                        self.symbol, detail)
            return self._abandon(now)
        return []

    def received(self, link: int, messages: list[Parsed], now: float) -> list[Action]:
        """The messages of one socket read that did not take the direct path."""
        actions: list[Action] = []
        trades: list[Trade] = []
        handover = self.handover
        for one in messages:
            if type(one) is Trade:
                if link == self.serving or link == self.draining:
                    if handover is not None:
                        if handover.from_old(one):
                            trades.append(one)
                    elif self.resume_after is None or one.trade_id > self.resume_after:
                        self.resume_after = None
                        trades.append(one)
                elif link in (self.candidate, self.connecting) and handover is not None:
                    trades += handover.from_new(one)
                elif link == self.connecting:
                    trades.append(one)
                elif link in self.stale:
                    self.stale[link] += 1
                continue
            if one is Notice.SERVER_SHUTDOWN:
                reason = "serverShutdown notice"
                if link == self.serving and self.step is None:
                    log.warning("%s: serverShutdown announced, handing over to a new connection", self.symbol)
                    self.handover_at, self.handover_why = now, "serverShutdown"
                elif link in (self.candidate, self.connecting):
                    # The server is going away under the new link too: hand over again once it serves.
                    self.candidate_noticed = True
            else:
                assert isinstance(one, Rejected)
                reason = one.reason
            if trades:
                actions.append(Deliver(trades))
                trades = []
            actions.append(Reject(reason))
        if trades:
            actions.append(Deliver(trades))
        if self.step is HandoverStep.OVERLAP and handover is not None and handover.joined:
            actions += self._end_overlap(now)
        return actions

    def closed(self, link: int, now: float, reason: str) -> list[Action]:
        """`link` has ended: its transport is gone."""
        if link in self.stale:
            dropped = self.stale.pop(link)
            if dropped:
                log.info("%s: %d trade(s) arrived on a connection being closed and were dropped (the connection "
                         "in service carries the same stream, or they fall in the reported gap)",
                         self.symbol, dropped)
            return []
        if link == self.draining:
            self.draining = None
            return []
        if link == self.connecting:
            return self.failed(link, now, Failure.ERROR, reason)
        if link == self.candidate:
            if self.step is HandoverStep.CONNECTING:
                return self.failed(link, now, Failure.ERROR, reason)
            log.warning("%s: handover abandoned (new connection closed); keeping the old connection", self.symbol)
            return self._abandon(now)
        if link == self.serving:
            return self._serving_gone(now, reason)
        return []

    def pause(self, now: float) -> list[Action]:
        """Close every link and stay disconnected until `resume` (the disk budget is reached)."""
        return [] if self.phase in (Phase.PAUSED, Phase.STOPPED) else self._shut(Phase.PAUSED, "spool full: pausing")

    def resume(self, now: float) -> list[Action]:
        if self.phase is not Phase.PAUSED:
            return []
        self.phase, self.retry_at = Phase.WAITING, now
        if self.draining is not None:
            # Still closing: its last trades would come after the new link's first.
            self.stale[self.draining], self.draining = 0, None
        return [Gap("paused"), *self.tick(now, {})]

    def stop(self, now: float) -> list[Action]:
        return [] if self.phase is Phase.STOPPED else self._shut(Phase.STOPPED, "collector stopping")

    # inside

    def _count_open(self, actions: list[Action]) -> None:
        self._opened += 1
        if self._opened > 1:
            actions.append(Reconnected())

    def _serve(self, link: int, now: float) -> None:
        self.serving, self.serving_since, self.resume_after = link, now, None
        # Each connection draws its own lifetime, so the instance's handovers never fall together.
        lifetime = planned_lifetime(self.connection_lifetime, self.rng)
        self.handover_at, self.handover_why = now + lifetime, f"planned after {lifetime:.0f} s"

    def _serving_gone(self, now: float, reason: str) -> list[Action]:
        """The link in service has ended (or was cut)."""
        step, new = self.step, self.candidate
        self.serving, self.step, self.candidate = None, None, None
        if step is HandoverStep.OVERLAP or step is HandoverStep.CONNECTING:
            # The new link carries on after a gap: it takes over at once if it is open, else once it opens.
            assert new is not None
            log.warning("%s: the old connection ended during the handover (%s)", self.symbol, reason)
            actions: list[Action] = [Gap(f"old connection ended during the handover: {reason}")]
            if step is HandoverStep.CONNECTING:
                self.phase, self.connecting = Phase.CONNECTING, new
                return actions
            self._serve(new, now)
            actions += [*self._release_held(), Switch(new)]
            return self._notice_carried(actions)
        actions = [Withdraw()] if step is HandoverStep.REQUESTED else []
        self.handover = None
        if now - self.serving_since >= STABLE_CONNECTION_SECONDS:
            self.backoff.reset()
        delay = self.backoff.next()
        log.warning("%s: disconnected: %s; reconnecting in %.2f s", self.symbol, reason, delay)
        self.phase, self.retry_at = Phase.WAITING, now + delay
        return [*actions, Gap(f"disconnected: {reason}")]

    def _release_held(self) -> list[Action]:
        """Whatever a handover held, past the last id delivered; the handover ends, and the link that goes on
        skips what was delivered already."""
        handover, self.handover = self.handover, None
        if handover is None:
            return []
        trades = handover.release()
        self.resume_after = handover.last_id
        return [Deliver(trades)] if trades else []

    def _end_overlap(self, now: float, *, timed_out: bool = False) -> list[Action]:
        """Both links are open and the new one joined, or the wait for the overlap is over."""
        handover, old, new = self.handover, self.serving, self.candidate
        assert handover is not None and old is not None and new is not None
        if handover.joined:
            log.info("%s: handover done at trade id %s", self.symbol, handover.last_id)
            actions: list[Action] = []
        elif timed_out and handover.held:
            log.warning("%s: new connection did not overlap the old one in %.0f s; switching anyway",
                        self.symbol, HANDOVER_TIMEOUT_SECONDS)
            actions = [Gap("handover without overlap")]
        else:
            log.warning("%s: handover abandoned (new connection silent); keeping the old connection", self.symbol)
            self.stale[new] = 0
            return [Close(new, "handover abandoned"), *self._abandon(now)]
        self.stale[old] = 0
        self.step, self.candidate = None, None
        self._serve(new, now)
        actions += [*self._release_held(), Switch(new), Close(old, "handover to a new connection")]
        return self._notice_carried(actions)

    def _notice_carried(self, actions: list[Action]) -> list[Action]:
        """A `serverShutdown` notice that came on the new link before it took over is acted on now."""
        if self.candidate_noticed:
            self.candidate_noticed = False
            log.warning("%s: serverShutdown announced on the new connection, handing over again", self.symbol)
            self.handover_at, self.handover_why = self.serving_since, "serverShutdown"
        return actions

    def _abandon(self, now: float) -> list[Action]:
        """The new link will not serve: the old one stays, and the handover is tried again after a backoff.
        What the new link brought is dropped (the old link carries the same stream), unless the two had
        joined: then the old link has stopped delivering, so the new link's trades are delivered and the old
        link's are skipped up to them."""
        actions = self._release_held() if self.handover is not None and self.handover.joined else []
        self.step, self.handover, self.candidate, self.candidate_noticed = None, None, None, False
        self.handover_at = now + self.backoff.next()
        return actions

    def _shut(self, phase: Phase, reason: str) -> list[Action]:
        """Pause or stop: every link is closed."""
        actions: list[Action] = []
        if self.phase is Phase.REQUESTED or self.step is HandoverStep.REQUESTED:
            actions.append(Withdraw())
        if self.handover is not None:
            if self.handover.held and not self.handover.joined:
                # What the new link brought past the old one's last trade is delivered, after a gap.
                actions.append(Gap(reason))
            actions += self._release_held()
        if self.serving is not None:
            log.info("%s: disconnected: %s", self.symbol, reason)
            actions.append(Close(self.serving, reason))
            self.draining = self.serving
        for link in (self.connecting, self.candidate):
            if link is not None:
                actions.append(Close(link, reason))
                self.stale[link] = 0
        self.phase = phase
        self.serving = self.candidate = self.connecting = None
        self.step, self.handover, self.candidate_noticed = None, None, False
        return actions
