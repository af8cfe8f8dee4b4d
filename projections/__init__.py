"""Read models built from the events, each recording its position in the same transaction as its rows."""

NOT_PROJECTED: dict[str, str] = {
    "assessment.opened": "the assessment aggregate's creation; scores are computed from the log",
    "assessment.finalised": "read from the log by the assessment service and by `baton verify`",
    "assessment.finalisation_voided": "read from the log by the assessment service and by `baton verify`",
    "assessment_scheme.opened": "the scheme aggregate's creation",
    "assessment_scheme.published": "read from the log by the assessment service and by `baton verify`",
    "branch_standard.opened": "the standard aggregate's creation; versions are read by the branch board",
    "credentials.opened": "the credentials log's creation",
    "credentials.actor_revoked": "read by the API's token check from the credentials aggregate",
    "credentials.key_retired": "read by the API's token check from the credentials aggregate",
    "credentials.key_rotated": "read by the API's token check from the credentials aggregate",
    "credentials.token_revoked": "read by the API's token check from the credentials aggregate",
    "organisation.founded": "the organisation's creation; the organisation is read from its aggregate",
    "organisation.cadre_registered": "read from the organisation aggregate (GET /v1/org)",
    "organisation.cadre_seconded": "read from the organisation aggregate (GET /v1/org)",
    "organisation.category_defined": "read from the organisation aggregate (GET /v1/org)",
    "organisation.department_added": "read from the organisation aggregate (GET /v1/org) and by the assessment",
    "personal_data.erased": "the person's key is destroyed in the same transaction; reads find it gone",
    "points_policy.established": "read from the points policy aggregate when points are awarded",
    "points_policy.policy_set": "read from the points policy aggregate when points are awarded",
}
"""Events no read model handles, each with where it is read instead: a new event must be handled or listed here."""
