"""Volunteering routes: volunteers and their points, activities, the reward catalogue, party members' service."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Query

from api.common import (
    ERRORS,
    UNKNOWN_IN_QUERY,
    ActivityId,
    Commands,
    CommunityId,
    RewardId,
    Router,
    VolunteerId,
    actor_dependency,
)
from api.paging import PAGED, Page, paging
from api.schemas import (
    Accepted,
    ActivityDetail,
    ActivityIn,
    ActivitySummary,
    AttendanceIn,
    BranchService,
    LeaderboardRow,
    Participation,
    PartyService,
    PledgeIn,
    PointsPolicyIn,
    RedemptionIn,
    RedemptionOut,
    RestockIn,
    RewardIn,
    RewardOut,
    SignupIn,
    VoidIn,
    VolunteerDetail,
    VolunteerIn,
)
from api.tokens import Tokens
from domain.errors import NotFound, Thing
from infra.clock import Clock
from infra.privacy import Vault
from projections.volunteering import VolunteeringView
from services.access import (
    Actor,
    Context,
    check_reads_county_participation,
    check_reads_party_service,
    check_reads_redemptions,
    check_reads_volunteer,
    check_reads_volunteering,
    district_communities,
    sees_personal_data,
)
from services.base import Receipt
from services.organisation import OrganisationApp
from services.volunteering import VolunteeringApp

Year = Annotated[int | None, Query(ge=2000, le=2100, description="Default: this year.")]
Community = Annotated[str, Query(description=f"A community's unit id{UNKNOWN_IN_QUERY}.")]
CommunityFilter = Annotated[str | None, Query(description=f"Only this community (a unit id){UNKNOWN_IN_QUERY}.")]


def volunteering_router(
    app: VolunteeringApp, view: VolunteeringView, org: OrganisationApp, vault: Vault, clock: Clock, tokens: Tokens
) -> APIRouter:
    router = Router(prefix="/v1", tags=["volunteering"], responses=ERRORS)
    actor_dep = Depends(actor_dependency(tokens))
    command = Commands(router, actor_dep)

    def personal(actor: Actor, value: Any) -> Any:
        """Reveal sealed personal data to those who may see it; null where erased."""
        return vault.reveal_in(value, visible=sees_personal_data(actor))

    def this_year(year: int | None) -> int:
        return year or clock.now().year

    # Commands ----------------------------------------------------------------------------------

    @command.post("/volunteers", status_code=201, response_model=Accepted, summary="Register a volunteer")
    def register(ctx: Context, body: VolunteerIn) -> Receipt:
        return app.register_volunteer(ctx, **body.model_dump())

    @command.post(
        "/volunteers/{volunteer_id}/redemptions",
        status_code=201,
        response_model=Accepted,
        summary="Redeem points for a reward (the volunteer themself)",
    )
    def redeem(ctx: Context, volunteer_id: VolunteerId, body: RedemptionIn) -> Receipt:
        return app.redeem(ctx, volunteer_id, reward_id=body.reward_id)

    @command.post(
        "/volunteers/{volunteer_id}/pledges",
        status_code=201,
        response_model=Accepted,
        summary="承诺 An in-service party member pledges service for a year",
    )
    def pledge(ctx: Context, volunteer_id: VolunteerId, body: PledgeIn) -> Receipt:
        return app.pledge(ctx, volunteer_id, year=body.year, hours=body.hours, service=body.service)

    @command.post("/activities", status_code=201, response_model=Accepted, summary="Publish a service activity")
    def publish(ctx: Context, body: ActivityIn) -> Receipt:
        return app.publish_activity(ctx, **body.model_dump())

    @command.post(
        "/activities/{activity_id}/signups", status_code=201, response_model=Accepted, summary="Sign a volunteer up"
    )
    def sign_up(ctx: Context, activity_id: ActivityId, body: SignupIn) -> Receipt:
        return app.sign_up(ctx, activity_id, volunteer_id=body.volunteer_id)

    @command.post(
        "/activities/{activity_id}/attendance",
        status_code=201,
        response_model=Accepted,
        summary="Confirm a volunteer's hours; only confirmed hours earn points, once per activity",
    )
    def attendance(ctx: Context, activity_id: ActivityId, body: AttendanceIn) -> Receipt:
        return app.confirm_attendance(ctx, activity_id, volunteer_id=body.volunteer_id, hours=body.hours)

    @command.post(
        "/activities/{activity_id}/void",
        response_model=Accepted,
        summary="A complaint voids the activity's credit (reversing entries)",
    )
    def void(ctx: Context, activity_id: ActivityId, body: VoidIn) -> Receipt:
        return app.void_credit(ctx, activity_id, reason=body.reason)

    @command.post("/rewards", status_code=201, response_model=Accepted, summary="Add a gift to a community's catalogue")
    def offer(ctx: Context, body: RewardIn) -> Receipt:
        return app.offer_reward(ctx, **body.model_dump())

    @command.post("/rewards/{reward_id}/restock", response_model=Accepted, summary="Restock a gift")
    def restock(ctx: Context, reward_id: RewardId, body: RestockIn) -> Receipt:
        return app.restock(ctx, reward_id, quantity=body.quantity)

    @command.put(
        "/communities/{community_id}/points-policy",
        response_model=Accepted,
        summary="Set how the community's points lapse (applies to points earned from now on)",
    )
    def points_policy(ctx: Context, community_id: CommunityId, body: PointsPolicyIn) -> Receipt:
        return app.set_points_policy(ctx, community_id=community_id, **body.model_dump())

    # Reads -----------------------------------------------------------------------------------

    @router.get(
        "/volunteers/{volunteer_id}",
        response_model=VolunteerDetail,
        summary="A volunteer's balance and ledger (entries sum to the balance)",
    )
    def volunteer(volunteer_id: VolunteerId, actor: Actor = actor_dep) -> dict[str, Any]:
        row = view.volunteer(volunteer_id)
        if row is None:
            missing = f"volunteer {volunteer_id} does not exist (or is not in the read model yet)"
            raise NotFound(missing, Thing.VOLUNTEER, volunteer_id)
        check_reads_volunteer(org.current(), actor, volunteer_id, row["community_id"])
        person = vault.person(UUID(row["volunteer_id"]))
        return {**personal(actor, row), "erased": person is None or person.erased}

    @router.get(
        "/communities/{community_id}/leaderboard",
        response_model=list[LeaderboardRow],
        summary="Volunteers ranked by points earned",
    )
    def leaderboard(
        community_id: CommunityId, actor: Actor = actor_dep, limit: Annotated[int, Query(ge=1, le=200)] = 20
    ) -> list[dict[str, Any]]:
        check_reads_volunteering(org.current(), actor, community_id)
        return personal(actor, view.leaderboard(community_id, limit))

    @router.get(
        "/communities/{community_id}/participation",
        response_model=Participation,
        summary="Volunteers with confirmed service in a year per 1,000 residents",
    )
    def participation(community_id: CommunityId, actor: Actor = actor_dep, year: Year = None) -> dict[str, Any]:
        check_reads_volunteering(org.current(), actor, community_id)
        rows = view.participation(this_year(year), community_id)
        if not rows:
            raise NotFound(f"community {community_id} is not in the read model yet")
        return rows[0]

    @router.get(
        "/participation",
        response_model=list[Participation],
        summary="Participation per 1,000 residents for every community",
    )
    def participation_all(actor: Actor = actor_dep, year: Year = None) -> list[dict[str, Any]]:
        check_reads_county_participation(actor)
        communities = district_communities(org.current(), actor)
        rows = view.participation(this_year(year), None)
        return [r for r in rows if communities is None or r["community_id"] in communities]

    @router.get(
        "/activities",
        response_model=list[ActivitySummary],
        summary="A community's activities, latest start first (paged: a Link header names the next page)",
        responses=PAGED,
    )
    def activities(
        community: Community,
        actor: Actor = actor_dep,
        page: Page = paging(200, 500, (str, str)),
    ) -> list[dict[str, Any]]:
        check_reads_volunteering(org.current(), actor, community)
        rows = view.activities(community, page.fetch_limit(), page.after)
        return page.cut(rows, ("starts_at", "activity_id"))

    @router.get("/activities/{activity_id}", response_model=ActivityDetail, summary="An activity and its roster")
    def activity(activity_id: ActivityId, actor: Actor = actor_dep) -> dict[str, Any]:
        row = view.activity(activity_id)
        if row is None:
            missing = f"activity {activity_id} does not exist (or is not in the read model yet)"
            raise NotFound(missing, Thing.ACTIVITY, activity_id)
        check_reads_volunteering(org.current(), actor, row["community_id"])
        return personal(actor, row)

    @router.get("/rewards", response_model=list[RewardOut], summary="A community's catalogue, with stock")
    def rewards(community: Community, actor: Actor = actor_dep) -> list[dict[str, Any]]:
        check_reads_volunteering(org.current(), actor, community)
        return view.catalogue(community)

    @router.get(
        "/redemptions",
        response_model=list[RedemptionOut],
        summary="Redemptions, newest first (paged: a Link header names the next page)",
        responses=PAGED,
    )
    def redemptions(
        actor: Actor = actor_dep,
        community: CommunityFilter = None,
        volunteer: str | None = None,
        page: Page = paging(500, 500, (int,)),
    ) -> list[dict[str, Any]]:
        check_reads_redemptions(org.current(), actor, community, volunteer)
        rows = view.redemptions(community, volunteer, page.fetch_limit(), page.after)
        return page.cut(rows, ("position",))

    @router.get(
        "/party-service",
        response_model=list[PartyService],
        summary="In-service party members' pledges and confirmed service hours, per branch or community",
    )
    def party_service(
        actor: Actor = actor_dep, year: Year = None, community: CommunityFilter = None, branch: str | None = None
    ) -> list[dict[str, Any]]:
        check_reads_party_service(org.current(), actor, community)
        rows = view.party_service(this_year(year), community, branch, district_communities(org.current(), actor))
        return personal(actor, rows)

    @router.get(
        "/party-service/branches",
        response_model=list[BranchService],
        summary="In-service party members' service summed per branch",
    )
    def branch_service(
        actor: Actor = actor_dep, year: Year = None, community: CommunityFilter = None
    ) -> list[dict[str, Any]]:
        check_reads_party_service(org.current(), actor, community)
        return view.branch_service(this_year(year), community, district_communities(org.current(), actor))

    return router
