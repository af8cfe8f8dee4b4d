"""Wiring: bootstrap() builds the applications and read models; Runtime runs NATS, relay, consumers, watcher."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import structlog
from faststream.nats import NatsBroker
from faststream.nats.security import NatsUserPassword
from nats.aio.client import Client

from consumers.common import durables, ensure_durables, install_prompt_batches
from consumers.inbox import inbox_router
from consumers.intake import INTAKE_DURABLE, Intake, OutcomeQueue, intake_router
from consumers.notify import notify_router, warn_of_deadlines
from consumers.projections import RETIRED_DURABLES, projection_router
from infra import metrics
from infra.clock import Clock, SystemClock
from infra.envelope import Envelope, EnvelopeCodec
from infra.guard import StreamGuard
from infra.jetstream import (
    AUDIT_STREAM,
    DEPT_STREAM,
    EVENTS_STREAM,
    INTAKE_STREAM,
    JetStreamPublisher,
    department_durable,
    ensure_consumer,
    ensure_department_consumers,
    ensure_streams,
    patiently,
    publish_all,
    retire_consumers,
    rewind_consumer,
)
from infra.lease import ROLES, Fence, Leases, Role, Roles, default_instance, holder_name
from infra.nats_auth import NatsAuth
from infra.nats_server import EmbeddedNats
from infra.notary import MerkleView, Notary, load_signer
from infra.patches import require_version
from infra.relay import Relay, last_published
from infra.settings import Settings, nats_servers, without_password
from infra.sql import Cursor, Sql
from infra.sqlite import EVENTSOURCING_VERSION
from infra.store import Store, postgres_datastore
from infra.supervisor import ProjectorProcess
from projections.base import BatonProjection, catch_up_together
from projections.branches import BranchProjection, BranchView
from projections.reports import ReportProjection, ReportView
from projections.scorecard import ScorecardProjection, ScorecardView
from projections.volunteering import VolunteeringProjection, VolunteeringView
from projections.whistle_board import WhistleBoardProjection, WhistleBoardView
from services.assessment import AssessmentApp
from services.branches import BranchApp
from services.credentials import CredentialsApp
from services.organisation import OrganisationApp
from services.privacy import PrivacyApp
from services.reports import ReportApp
from services.volunteering import VolunteeringApp
from services.watcher import Due, Watcher
from services.whistles import WhistleApp

log = structlog.get_logger("baton.runtime")


class StoreEventSource:
    """The store read as envelopes (what projections catch up and fill gaps from)."""

    def __init__(self, store: Store, codec: EnvelopeCodec) -> None:
        self.store = store
        self.codec = codec

    def envelopes(self, after: int, limit: int, stop: int | None = None) -> list[Envelope]:
        return [self.codec.envelope(n) for n in self.store.select(after, limit, stop=stop)]


@dataclass
class Container:
    """The applications, read models and their shared store: everything but the network."""

    settings: Settings
    clock: Clock
    store: Store
    codec: EnvelopeCodec
    source: StoreEventSource
    org: OrganisationApp
    whistles: WhistleApp
    volunteering: VolunteeringApp
    branches: BranchApp
    assessment: AssessmentApp
    privacy: PrivacyApp
    credentials: CredentialsApp
    notary: Notary
    views: Sql
    board: WhistleBoardProjection
    scorecard: ScorecardProjection
    volunteers: VolunteeringProjection
    branch_board: BranchProjection
    reports: ReportApp
    report_board: ReportProjection
    projections: dict[str, BatonProjection[Any]] = field(default_factory=dict)

    def close(self) -> None:
        self.views.close()
        self.store.close()


def bootstrap(settings: Settings | None = None, clock: Clock | None = None) -> Container:
    """Open the store and read models and build the applications on them."""
    settings = settings or Settings()
    clock = clock or SystemClock()
    store = Store(settings)
    codec = EnvelopeCodec(store.mapper)
    source = StoreEventSource(store, codec)
    org = OrganisationApp(store, clock)
    whistles = WhistleApp(store, clock, org)
    volunteering = VolunteeringApp(store, clock, org)
    branches = BranchApp(store, clock, org)
    privacy = PrivacyApp(store, clock, org)
    credentials = CredentialsApp(store, SystemClock())  # tokens expire in wall-clock time, whatever the domain's
    views = Sql(store.views_datastore())
    origin = settings.log_origin or f"baton/{store.identity}"
    signer = load_signer(settings.data_dir, origin, store.secrets)
    notary = Notary(
        store,
        codec,
        MerkleView(views),
        signer,
        origin,
        clock.now,
        every=settings.checkpoint_every,
        interval=settings.checkpoint_interval,
    )

    def tree(position: int) -> tuple[int, bytes]:
        notary.catch_up()
        size = notary.view.size_at(position)
        return size, notary.view.root(size)

    assessment = AssessmentApp(store, clock, org, codec, tree)
    reports = ReportApp(store, clock, org, whistles)
    board = WhistleBoardProjection(WhistleBoardView(views), source)
    scorecard = ScorecardProjection(ScorecardView(views), source)
    volunteers = VolunteeringProjection(VolunteeringView(views), source)
    branch_board = BranchProjection(BranchView(views), source)
    report_board = ReportProjection(ReportView(views), source)
    return Container(
        settings=settings,
        clock=clock,
        store=store,
        codec=codec,
        source=source,
        org=org,
        whistles=whistles,
        volunteering=volunteering,
        branches=branches,
        assessment=assessment,
        privacy=privacy,
        credentials=credentials,
        notary=notary,
        views=views,
        board=board,
        scorecard=scorecard,
        volunteers=volunteers,
        branch_board=branch_board,
        reports=reports,
        report_board=report_board,
        projections={p.name: p for p in (board, scorecard, volunteers, branch_board, report_board)},
    )


def deadline_watcher(baton: Container) -> Watcher:
    """The watcher, reading what is due from the read models' indexes and recording it through the applications."""
    return Watcher(
        baton.clock,
        deadlines=Due(lambda now: baton.board.view.due_deadlines(now.isoformat()), baton.whistles.check_deadlines),
        expiries=Due(lambda now: baton.volunteers.view.due_expiries(now.isoformat()), baton.volunteering.expire_points),
        rectifications=Due(
            lambda now: baton.branch_board.view.due_rectifications(baton.branches.today(now).isoformat()),
            baton.branches.check_rectifications,
        ),
        reports=Due(lambda now: baton.report_board.view.due(now.isoformat()), baton.reports.check_deadline),
        following=Due(lambda now: baton.report_board.view.following(), baton.reports.follow_whistle),
    )


def install_patches() -> None:
    """Apply Baton's fixes to third-party libraries (each checks the library's version first): at start-up, once
    per process, before any consumer runs. Nothing is patched merely by importing a module."""
    install_prompt_batches()
    require_version(
        "eventsourcing", EVENTSOURCING_VERSION, "infra.sqlite's datastore (it overrides private methods)", strict=False
    )


ALL, COMMANDS, PROJECTOR = "all", "commands", "projector"
"""Runtime parts: everything in one process; or the command side (NATS, relay, intake, inbox, watcher) with a
projector process beside it (read models and notary), which `baton serve` starts and stops with itself."""


class Runtime:
    """What `baton serve` runs besides HTTP: NATS (embedded or external), streams, relay, consumers, watcher."""

    def __init__(
        self,
        baton: Container,
        *,
        nats_url: str | None = None,
        watch: bool = True,
        part: str = ALL,
        projector_log: Path | None = None,
    ) -> None:
        if part not in (ALL, COMMANDS, PROJECTOR):
            raise ValueError(f"unknown runtime part {part!r}")
        self.baton = baton
        self.nats_url = nats_url or baton.settings.nats_url
        self.watch = watch
        self.part = part
        self.projector: ProjectorProcess | None = None
        self.projector_log = projector_log
        self.outcomes = OutcomeQueue()
        self.embedded: EmbeddedNats | None = None
        self.nc: Client | None = None
        self.publisher: JetStreamPublisher | None = None
        self.relay: Relay | None = None
        self.watcher = deadline_watcher(baton)
        self.departments: set[str] = set()
        self.instance = baton.settings.instance or default_instance(baton.settings.http_port)
        # On PostgreSQL the leases have connections of their own: renewals must not wait for a pool that fenced
        # transactions queued behind a renewal have taken (seen under load: every role dropped at once).
        self._lease_sql = (
            Sql(postgres_datastore(baton.settings, pool_size=len(ROLES), max_overflow=0))
            if (baton.settings.is_postgres)
            else None
        )
        self.leases = Leases(self._lease_sql or baton.views, holder_name(self.instance), baton.settings.lease_ttl)
        self.roles: Roles | None = None
        self.guard: StreamGuard | None = None
        self._brokers: dict[str, NatsBroker] = {}
        self._audit_seq = 0
        """BATON_AUDIT's last sequence as the notary last saw it: each checkpoint expects it."""
        self._login: dict[str, Any] = {}
        self._tasks: list[asyncio.Task[Any]] = []

    @property
    def url(self) -> str:
        assert self.nats_url is not None
        return self.nats_url

    @property
    def servers(self) -> list[str]:
        """The NATS server URLs to connect to (several for a cluster)."""
        return nats_servers(self.url)

    @property
    def runs_commands(self) -> bool:
        return self.part in (ALL, COMMANDS)

    @property
    def runs_projections(self) -> bool:
        return self.part in (ALL, PROJECTOR)

    async def start(self) -> None:
        """Start NATS if embedded, declare streams, catch read models up, then relay and consume."""
        install_patches()
        settings = self.baton.settings
        replicas = settings.nats_replicas
        self.departments = self._department_codes()
        if self.nats_url is None and self.part == PROJECTOR:
            raise ValueError("a projector runs beside a `baton serve`: give it BATON_NATS_URL")
        if self.nats_url is None:
            if replicas > 1:
                raise ValueError(
                    f"BATON_NATS_REPLICAS={replicas} needs a NATS cluster: set BATON_NATS_URL to its servers "
                    "(comma-separated); the embedded nats-server is a single node"
                )
            auth = NatsAuth.load(settings.data_dir, settings.nats_secret, self.baton.store.secrets)
            self.embedded = EmbeddedNats(settings.data_dir, settings.nats_port, auth=auth, departments=self.departments)
            await self.embedded.start()
            self.nats_url = self.embedded.url
            service = auth.service()
            self._login = {"user": service.user, "password": service.password}
        elif settings.nats_user is not None:
            self._login = {"user": settings.nats_user, "password": settings.nats_password or ""}
        elif settings.nats_secret is not None or self.baton.store.secrets is not None:
            # An external NATS configured from `baton nats-creds config` with the same secret (BATON_NATS_SECRET,
            # or the installation's, kept in the database under BATON_MASTER_KEY).
            service = NatsAuth.load(settings.data_dir, settings.nats_secret, self.baton.store.secrets).service()
            self._login = {"user": service.user, "password": service.password}
        self.nc = await nats.connect(
            self.servers,
            **self._login,
            disconnected_cb=self._on_disconnect,
            reconnected_cb=self._on_reconnect,
            name="baton",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            allow_reconnect=True,
            connect_timeout=5,
        )
        nc = self.nc
        await patiently("streams", lambda: ensure_streams(nc, replicas))
        if self.runs_commands:
            codes = sorted(self.departments)
            await patiently("department consumers", lambda: ensure_department_consumers(nc, codes, replicas))
        self.publisher = JetStreamPublisher(self.nc)
        await self.publisher.start()
        self.guard = StreamGuard(nc, replicas, self._streams_recreated, self.part)
        self._tasks.append(asyncio.create_task(self.guard.run(), name="stream-guard"))
        self.roles = Roles(self.leases, self._roles())
        await self.roles.start()
        if self.runs_commands:
            self._tasks.append(asyncio.create_task(self._follow_departments(), name="departments"))
        if self.part == COMMANDS:
            self.projector = ProjectorProcess(settings, self.url, self._login, self.projector_log)
            await self.projector.start()
        log.info(
            "runtime_started",
            nats=without_password(self.url),
            replicas=self.baton.settings.nats_replicas,
            store=self.baton.store.backend,
            part=self.part,
            instance=self.instance,
            roles=self.roles.held,
        )

    # Singleton roles: each runs in one process of the installation at a time, under its lease --------------

    def _roles(self) -> dict[str, Role]:
        roles: dict[str, Role] = {}
        if self.runs_commands:
            roles["relay"] = self._relay
            if self.watch:
                roles["watcher"] = self._watch
            roles["intake"] = self._intake
            roles["inbox"] = self._inbox
            roles["notifier"] = self._notify
        if self.runs_projections:
            roles["projections"] = self._project
            roles["notary"] = self._notarise
        return roles

    async def _relay(self, fence: Fence) -> None:
        """Publish the store to BATON_EVENTS (fenced by the stream's expected last sequence)."""
        assert self.nc is not None and self.publisher is not None
        on_missing = self.guard.wake if self.guard is not None else None
        relay = self.relay = Relay(
            self.baton.store, self.baton.codec, self.nc, self.publisher, on_stream_missing=on_missing
        )
        try:
            await relay.run()
        finally:
            relay.synced = False

    async def _watch(self, fence: Fence) -> None:
        """Record missed deadlines, lapsed points and overdue rectifications as time passes."""
        await self.watcher.run(self.baton.settings.watch_interval)

    async def _intake(self, fence: Fence) -> None:
        """Decide department commands, one consumer in the installation, so each department's stay in order."""
        intake = Intake(self.baton.whistles, self.baton.org, self.baton.store.commands)
        nc = self.nc
        assert nc is not None
        await patiently("intake rewind", lambda: rewind_consumer(nc, INTAKE_STREAM, INTAKE_DURABLE))
        try:
            await self._consume("baton-intake", intake_router(intake, self._publisher, outcomes=self.outcomes))
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):  # the last batch's outcomes, before its consumer goes
                    await self.outcomes.drain()

    async def _inbox(self, fence: Fence) -> None:
        """Copy the events that concern each department into its inbox, each once (the router's position is fenced)."""
        cursor = await asyncio.to_thread(Cursor, self.baton.views, "inbox", fence)
        await self._consume("baton-inbox", inbox_router(self._publisher, self.baton.codec.types, cursor))

    async def _notify(self, fence: Fence) -> None:
        """Tell the notification gateway what residents must hear of and which deadlines are about to lapse."""
        baton = self.baton
        cursor = await asyncio.to_thread(Cursor, baton.views, "notify", fence)
        due = await asyncio.to_thread(Cursor, baton.views, "notify_due", fence)
        router = notify_router(self._publisher, baton.codec.types, cursor, baton.reports.contact_of)
        warner = asyncio.create_task(
            warn_of_deadlines(
                self._publisher,
                baton.report_board.view.due_between,
                due,
                baton.clock.now,
                baton.settings.watch_interval,
            )
        )
        try:
            await self._consume("baton-notify", router)
        finally:
            warner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await warner

    async def _project(self, fence: Fence) -> None:
        """Keep every read model level with the store; each batch checks the fence before it commits."""
        projections = list(self.baton.projections.values())
        for projection in projections:
            projection.fence = fence
        level = asyncio.create_task(self._keep_level(projections), name="projections-level")
        try:
            await asyncio.to_thread(catch_up_together, projections)
            nc = self.nc
            assert nc is not None
            await patiently("retired durables", lambda: retire_consumers(nc, EVENTS_STREAM, RETIRED_DURABLES))
            await self._consume("baton-projections", projection_router(projections, self.baton.codec.types))
        finally:
            level.cancel()
            # Unfenced again once the role has ended here (a rebuild, a test): positions still only move forward.
            for projection in projections:
                if projection.fence is fence:
                    projection.fence = None

    async def _keep_level(self, projections: list[BatonProjection[Any]], grace: float = 2.0) -> None:
        """The store is the truth: read models behind it that have not moved for `grace` seconds (BATON_EVENTS
        not reachable, or not fed) catch up from the store itself, as at start."""
        stuck: tuple[int, float] | None = None  # the lowest position, and since when it has not moved
        while True:
            await asyncio.sleep(grace / 4)
            try:
                top, low = await asyncio.to_thread(
                    lambda: (self.baton.store.max_position(), min(p.position() for p in projections))
                )
                now = time.monotonic()
                if low >= top:
                    stuck = None
                elif stuck is None or stuck[0] != low:
                    stuck = (low, now)
                elif now - stuck[1] >= grace:
                    log.info("read_models_caught_up_from_store", behind=top - low, stalled_s=round(now - stuck[1], 1))
                    await asyncio.to_thread(catch_up_together, projections)
                    stuck = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the views database full or read-only, say: try again next round
                log.warning("read_models_catch_up_failed", error=f"{type(exc).__name__}: {exc}")
                stuck = None

    async def _notarise(self, fence: Fence) -> None:
        """Give every event its Merkle leaf and sign checkpoints of the tree."""
        notary = self.baton.notary
        notary.fence = fence
        try:
            await notary.run(self._publish_checkpoint, self._published_checkpoint)
        finally:
            if notary.fence is fence:
                notary.fence = None

    async def _consume(self, name: str, router: Any) -> None:
        """Run a router's consumers on a connection of their own until cancelled."""
        broker = NatsBroker(
            self.servers,
            security=NatsUserPassword(self._login["user"], self._login["password"]) if self._login else None,
            logger=None,
            name=name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
        )
        broker.include_router(router)
        nc, replicas = self.nc, self.baton.settings.nats_replicas
        assert nc is not None
        self._brokers[name] = broker  # the stream guard makes its durables again if their stream is made again
        await patiently("durable consumers", lambda: ensure_durables(nc, broker, replicas))
        await broker.start()
        try:
            await asyncio.Event().wait()
        finally:
            self._brokers.pop(name, None)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    await broker.stop()

    def _department_codes(self) -> set[str]:
        return set(self.baton.org.current().departments)

    async def _follow_departments(self, interval: float = 1.0) -> None:
        """A department added to the organisation gets its NATS login and durable inbox consumer."""
        while True:
            await asyncio.sleep(interval)
            try:
                codes = await asyncio.to_thread(self._department_codes)
                new = sorted(codes - self.departments)
                if not new:
                    continue
                if self.embedded is not None:
                    await self.embedded.admit(codes)
                assert self.nc is not None
                await ensure_department_consumers(self.nc, new, self.baton.settings.nats_replicas)
                self.departments |= set(new)
                log.info("departments_connected", departments=new)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("departments_follow_failed", error=repr(exc))

    async def _streams_recreated(self, streams: list[str]) -> list[str]:
        """Streams were made again (lost, then made by this process's guard or another's): make this process's
        durable consumers on them again and have the relay and the notary read them afresh; the consumers made."""
        nc, replicas = self.nc, self.baton.settings.nats_replicas
        assert nc is not None
        made: list[str] = []
        if self.runs_commands and DEPT_STREAM in streams:
            codes = sorted(self.departments)
            await ensure_department_consumers(nc, codes, replicas)
            made += [department_durable(code) for code in codes]
        for broker in list(self._brokers.values()):
            for stream, config in durables(broker):
                if stream in streams:
                    await ensure_consumer(nc, stream, config, replicas)
                    made.append(str(config.durable_name))
        if EVENTS_STREAM in streams and self.relay is not None:
            self.relay.resync()
        if AUDIT_STREAM in streams and self.runs_projections:
            self.baton.notary.resync()
        return made

    async def _published_checkpoint(self) -> int:
        """The tree size of the last checkpoint on BATON_AUDIT (0 when none); remembers the stream's last sequence."""
        assert self.nc is not None
        js = self.nc.jetstream()
        info = await js.stream_info(AUDIT_STREAM)
        self._audit_seq = info.state.last_seq or 0
        if not info.state.messages:
            return 0
        last = await js.get_msg(AUDIT_STREAM, seq=info.state.last_seq)
        return int((last.headers or {}).get("Baton-Tree-Size", "0"))

    async def _publish_checkpoint(self, note: str, size: int) -> None:
        headers = {
            "Nats-Msg-Id": f"checkpoint:{self.baton.notary.origin}:{size}",
            "Baton-Tree-Size": str(size),
            "Nats-Expected-Last-Sequence": str(self._audit_seq),  # lost and made again: refused, the notary resyncs
        }
        [ack] = await publish_all(self._publisher(), [("baton.audit.checkpoint", note.encode(), headers)])
        self._audit_seq = ack.seq

    async def _on_disconnect(self) -> None:
        """Fail in-flight publishes at once; the relay resyncs from the stream when NATS is back."""
        log.warning("nats_disconnected")
        metrics.nats_events.labels("disconnected").inc()
        if self.publisher is not None:
            self.publisher.fail_pending(ConnectionError("disconnected from NATS"))

    async def _on_reconnect(self) -> None:
        assert self.nc is not None
        url = self.nc.connected_url
        log.info("nats_reconnected", server=f"{url.hostname}:{url.port}" if url else None)
        metrics.nats_events.labels("reconnected").inc()

    def _publisher(self) -> JetStreamPublisher:
        assert self.publisher is not None
        return self.publisher

    async def stop(self) -> None:
        if self.projector is not None:
            await self.projector.stop()
        if self.roles is not None:
            await self.roles.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                async with asyncio.timeout(10):
                    await task
        self._tasks.clear()
        if self.publisher is not None:
            await self.publisher.close()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
        if self.embedded is not None:
            await self.embedded.stop()
        if self._lease_sql is not None:
            self._lease_sql.close()
        log.info("runtime_stopped")

    async def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until the relay and every projection have caught up with the store (for tests, demo).

        Looks again after 2 ms, then twice as long each time up to 20 ms: most waits end within a few ms, and the
        demo waits once a simulated hour."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pause = 0.002
        while True:
            published = await self._published() if self.runs_commands else None
            lags = await asyncio.to_thread(self._lags, published)
            if not any(lags.values()):
                return
            if loop.time() > deadline:
                raise TimeoutError(f"still behind after {timeout}s: {lags}")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.02)

    async def _published(self) -> int:
        """The last position on BATON_EVENTS: this process's relay's, or the stream's if another relays."""
        if self.relay is not None and self.relay.synced:
            return self.relay.published
        assert self.nc is not None
        return await last_published(self.nc.jetstream())

    def _lags(self, published: int | None) -> dict[str, int]:
        top = self.baton.store.max_position()
        lags: dict[str, int] = {}
        for name, projection in self.baton.projections.items():
            lags[name] = top - projection.position()
        lags["notary"] = top - self.baton.notary.position()
        if published is not None:
            lags["relay"] = top - published
            lags["departments"] = len(self._department_codes() - self.departments)
        return lags

    async def observe(self) -> None:
        """Set the gauges /metrics reports from the store, the stream and the views database, as they are now."""
        top = await asyncio.to_thread(self.baton.store.max_position)
        metrics.store_position.set(top)
        with contextlib.suppress(Exception):
            metrics.lag.labels("relay").set(max(top - await self._published(), 0))
        for name, projection in self.baton.projections.items():
            metrics.lag.labels(name).set(max(top - await asyncio.to_thread(projection.position), 0))
        metrics.lag.labels("notary").set(max(top - await asyncio.to_thread(self.baton.notary.position), 0))
        metrics.set_leases(await asyncio.to_thread(self.leases.all))

    def expected_roles(self) -> list[str]:
        """The roles an installation running like this one must have a holder for."""
        return [role for role in ROLES if role != "watcher" or self.watch]

    async def health(self) -> dict[str, Any]:
        """This instance, the leases and who holds them, store, NATS, relay and projection lags (GET /health)."""
        store: dict[str, Any] = {"backend": self.baton.store.backend}
        try:
            top = await asyncio.to_thread(self.baton.store.max_position)
            store.update(ok=True, position=top)
        except Exception as exc:
            store.update(ok=False, error=str(exc))
            top = None
        faults = {"store": await asyncio.to_thread(self.baton.store.fault), "views": self.baton.views.faults()}
        for part, fault in faults.items():
            if fault is not None:  # reachable, but it takes no writes: commands are answered 503 with the cause
                store.update(writable=False, fault=fault["code"], error=fault["message"])
                store[f"{part}_fault"] = fault
        connected = bool(self.nc and self.nc.is_connected)
        try:
            leases = await asyncio.to_thread(self.leases.all)
        except Exception as exc:
            leases, store["error"] = {}, str(exc)
        unheld = [role for role in self.expected_roles() if leases.get(role, {}).get("expires_in", -1) <= 0]
        relay: dict[str, Any] = {"lag": None, "holder": leases.get("relay", {}).get("holder")}
        try:
            relay["published"] = await self._published() if connected else None
        except Exception as exc:
            relay.update(published=None, error=f"{type(exc).__name__}: {exc}")
        if self.relay is not None:
            relay["error"] = self.relay.error
        if top is not None and relay["published"] is not None:
            relay["lag"] = max(top - relay["published"], 0)
        projections: dict[str, Any] = {}
        for name, projection in self.baton.projections.items():
            try:
                position = await asyncio.to_thread(projection.position)
                projections[name] = {"lag": None if top is None else max(top - position, 0), "position": position}
            except Exception as exc:
                projections[name] = {"lag": None, "error": str(exc)}
        notary = self.baton.notary
        latest = await asyncio.to_thread(notary.view.checkpoint)
        notary_health = {
            "lag": None if top is None else max(top - await asyncio.to_thread(notary.position), 0),
            "checkpoint": latest["size"] if latest else 0,
            "origin": notary.origin,
        }
        if self.roles is not None and "notary" in self.roles.held:  # elsewhere: its holder's log, a growing lag
            notary_health["error"] = notary.error
        relaying = self.relay is not None and self.roles is not None and "relay" in self.roles.held
        if relaying and self.relay is not None and self.relay.republishing is not None:
            again = self.relay.republishing
            relay["republishing"] = {"from": again.start, "until": again.until, "events": again.events}
        recovering = (self.guard is not None and self.guard.recovering) or "republishing" in relay
        ok = (
            store.get("ok")
            and store.get("writable", True)
            and connected
            and not unheld
            and (self.relay.synced if relaying and self.relay is not None else True)
            and not recovering
        )
        if self.projector is not None:
            ok = ok and self.projector.running
        mine = f"{self.instance}/"
        held = sorted(r for r, lease in leases.items() if lease["expires_in"] > 0 and lease["holder"].startswith(mine))
        return {
            "status": "ok" if ok else "degraded",
            "instance": self.instance,
            "roles": held,
            "leases": leases,
            "unheld": unheld,
            "store": store,
            "nats": {
                "url": without_password(self.nats_url) if self.nats_url else None,
                "connected": connected,
                "embedded": self.embedded is not None,
                "departments": sorted(self.departments),
                "streams": self.guard.health() if self.guard is not None else None,
            },
            "relay": relay,
            "projections": projections,
            "notary": notary_health,
            "projector": self.projector.health() if self.projector is not None else None,
        }
