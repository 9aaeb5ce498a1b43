"""The public surface of admitd_client is deliberate: changing it must change this test."""

import admitd_client


def test_exported_members() -> None:
    assert sorted(admitd_client.__all__) == sorted(
        [
            "DEFAULT_ENCODING",
            "AdmissionClient",
            "AdmitdError",
            "AsyncAdmissionClient",
            "ClientOptions",
            "DedupRole",
            "Lease",
            "LeaseArgs",
            "LeaseEnded",
            "Outcome",
            "Priority",
            "QueueUpdate",
            "Reason",
            "Rejected",
            "RetryPolicy",
            "Settlement",
            "Ticket",
            "TicketState",
            "Unavailable",
            "Usage",
            "UsageRow",
            "__version__",
            "count_tokens",
            "wrap",
        ]
    )
    for name in admitd_client.__all__:
        assert hasattr(admitd_client, name), name


def test_enums_match_the_proto() -> None:
    from admitd_client._proto import admission_pb2 as pb

    for outcome in admitd_client.Outcome:
        assert pb.Outcome.Value(f"OUTCOME_{outcome.name}") == int(outcome)
    for priority in admitd_client.Priority:
        assert pb.Priority.Value(f"PRIORITY_{priority.name}") == int(priority)
    assert {f"OUTCOME_{o.name}" for o in admitd_client.Outcome} == set(pb.Outcome.keys()) - {
        "OUTCOME_UNSPECIFIED"
    }
    assert {f"PRIORITY_{p.name}" for p in admitd_client.Priority} == set(pb.Priority.keys()) - {
        "PRIORITY_UNSPECIFIED"
    }
    assert {f"TICKET_STATE_{s.name}" for s in admitd_client.TicketState} == set(
        pb.TicketState.keys()
    ) - {"TICKET_STATE_UNSPECIFIED"}
    for state in admitd_client.TicketState:
        assert pb.TicketState.Value(f"TICKET_STATE_{state.name}") == int(state)
    assert {f"DEDUP_ROLE_{r.name}" for r in admitd_client.DedupRole} == set(pb.DedupRole.keys()) - {
        "DEDUP_ROLE_UNSPECIFIED"
    }
    for role in admitd_client.DedupRole:
        assert pb.DedupRole.Value(f"DEDUP_ROLE_{role.name}") == int(role)
    assert admitd_client.Reason("SOMETHING_NEW") is admitd_client.Reason.UNKNOWN
