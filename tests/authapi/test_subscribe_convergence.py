"""`keytrail subscribe` converges on the desired subscription against every strict reading of The Auth API, so that
`subscribe --check` then finds nothing; where it cannot, it fails with one line instead of reporting success."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from harness import start_fake_authapi
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_bootstrap import ACCESS_KEY, ACCOUNT, PROJECTS, TOKEN, Cli, settings_data, write_config

from authapi.fake import FakeAuthApi
from authapi.fake.strictness import CREATE_WEBHOOK_DTO, UPDATE_WEBHOOK_DTO
from authapi.subscriptions import Desired
from config.settings import DEFAULT_TOPICS, Secret
from events.wire import hook_url

OURS = hook_url("http://127.0.0.1:9", "acme")
MODES: dict[str, dict[str, Any]] = {
    "lenient": {},
    "patch-whitelist": {"patch_whitelist": True},
    "forbid-unknown": {"forbid_unknown_properties": True},
    "account-wide": {"account_wide_hooks": True},
    "fault-500-after-change": {"fault_after_change": "error", "fault_after_change_every": 3},
    "fault-drop-after-change": {"fault_after_change": "drop", "fault_after_change_every": 2},
}


def start(stack: ExitStack, **options: Any) -> FakeAuthApi:
    fake: FakeAuthApi = start_fake_authapi(stack, ACCESS_KEY, ACCOUNT, PROJECTS, **options)
    return fake


def cli(fake: FakeAuthApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(
        write_config(tmp_path / "keytrail.toml", settings_data(tmp_path, fake.url, "http://127.0.0.1:9")), capsys
    )


def ours_by_project(fake: FakeAuthApi) -> dict[str | None, int]:
    counts: dict[str | None, int] = {}
    for hook in fake.state.webhooks_in():
        if hook["url"].rstrip("/") == OURS:
            counts[hook["projectId"]] = counts.get(hook["projectId"], 0) + 1
    return counts


def add_ours(fake: FakeAuthApi, project_id: str | None, **fields: Any) -> dict[str, Any]:
    body = {
        "name": "keytrail",
        "url": OURS,
        "topics": list(DEFAULT_TOPICS),
        "httpMethod": "POST",
        "customHeaders": {"X-Keytrail-Token": TOKEN},
        "status": "live",
        **fields,
    }
    body |= {"projectId": project_id} if project_id else {"accountId": ACCOUNT}
    created: dict[str, Any] = fake.state.create_webhook(None, body)
    return created


def test_requests_carry_only_the_spec_dto_fields() -> None:
    desired = Desired("acme", "proj-1", ACCOUNT, OURS, DEFAULT_TOPICS, Secret(TOKEN))

    assert set(desired.create_body()) == set(CREATE_WEBHOOK_DTO)
    assert set(desired.update_body()) == set(UPDATE_WEBHOOK_DTO)


def test_topics_a_patch_ignores_are_repaired_so_check_agrees(
    stack: ExitStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The reported bug: the service drops `topics` from a PATCH, subscribe warned and exited 0, --check exited 2.
    fake = start(stack, patch_whitelist=True)
    hook = add_ours(fake, "proj-1", topics=["api-key.created"])
    run = cli(fake, tmp_path, capsys)

    code, report, err = run.json("subscribe", "--no-ping")

    assert (code, err) == (0, "")
    assert {c["action"] for c in report["changes"] if c["project_id"] == "proj-1"} == {"replace"}
    assert run("subscribe", "--check")[0] == 0
    [now] = fake.state.webhooks_in("proj-1")
    assert now["id"] != hook["id"]
    assert set(now["topics"]) == set(DEFAULT_TOPICS)


def test_a_patch_that_answers_200_but_does_not_take_falls_back_to_replace(
    stack: ExitStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # customHeaders IS in UpdateWebhookDTO, so keytrail PATCHes; a service that answers 200 and ignores it anyway
    # is found out by the re-read, and a fresh subscription (which does keep headers) repairs it.
    fake = start(stack, patch_whitelist=True, patch_ignored_fields=["customHeaders"])
    hook = add_ours(fake, "proj-1", customHeaders={})
    run = cli(fake, tmp_path, capsys)

    code, report, _ = run.json("subscribe", "--no-ping")

    assert code == 0
    assert [c["action"] for c in report["changes"] if c["project_id"] == "proj-1"] == ["replace"]
    assert hook["id"] not in {h["id"] for h in fake.state.webhooks_in()}
    assert run("subscribe", "--check")[0] == 0


@pytest.mark.parametrize("mode", list(MODES))
def test_a_wrong_subscription_converges_in_every_mode(
    stack: ExitStack, tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: str
) -> None:
    fake = start(stack, **MODES[mode])
    add_ours(fake, "proj-1", topics=["api-key.created"], status="paused", customHeaders={"X-Keytrail-Token": "old"})
    add_ours(fake, "proj-1", name="keytrail (copy)")
    run = cli(fake, tmp_path, capsys)

    code, _, err = run.json("subscribe", "--no-ping")

    assert code == 0, err
    assert run.json("subscribe", "--check")[:2] == (0, {"in_sync": True, "drift": []})
    assert ours_by_project(fake) == {"proj-1": 1, "proj-2": 1}


@pytest.mark.parametrize("kind", ["error", "drop"])
def test_faults_after_every_change_leave_exactly_one_subscription_per_project(
    stack: ExitStack, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    fake = start(stack, fault_after_change=kind, fault_after_change_every=1)
    add_ours(fake, "proj-2", status="paused")
    run = cli(fake, tmp_path, capsys)

    code, _, err = run.json("subscribe", "--no-ping")

    assert code == 0, err
    assert ours_by_project(fake) == {"proj-1": 1, "proj-2": 1}
    assert len(fake.state.requests_to("POST", "/webhooks")) == 2  # a create whose answer was lost is not repeated
    assert run("subscribe", "--check")[0] == 0


def test_keytrails_account_wide_hook_goes_after_each_project_has_its_own(
    stack: ExitStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = start(stack, account_wide_hooks=True)
    account_wide = add_ours(fake, None)
    foreign = fake.state.create_webhook(
        None,
        {"name": "crm", "url": "https://crm.example/h", "topics": ["api-key.created"], "httpMethod": "POST",
         "accountId": ACCOUNT},
    )  # fmt: skip
    run = cli(fake, tmp_path, capsys)
    check_before = run.json("subscribe", "--check")

    code, report, err = run.json("subscribe", "--no-ping")

    assert check_before[0] == 2
    assert {"account-wide"} <= {p for d in check_before[1]["drift"] for p in d["problems"]}
    assert code == 0, err
    assert [c["action"] for c in report["changes"]][-1] == "delete-account-wide"
    deletes = [r.path for r in fake.state.requests if r.method == "DELETE"]
    creates = [i for i, r in enumerate(fake.state.requests) if r.method == "POST"]
    assert deletes == [f"/webhooks/{account_wide['id']}"]
    assert fake.state.requests.index(fake.state.requests_to("DELETE", deletes[0])[0]) > max(creates)
    assert fake.state.get_webhook(None, foreign["id"]) == foreign
    assert ours_by_project(fake) == {"proj-1": 1, "proj-2": 1}
    assert run("subscribe", "--check")[0] == 0


def test_a_service_that_never_keeps_the_headers_fails_with_one_line(
    stack: ExitStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = start(stack, ignored_webhook_fields=["customHeaders"])
    run = cli(fake, tmp_path, capsys)

    code, out, err = run("subscribe", "--no-ping")

    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("keytrail: tenant acme: project proj-1: The Auth API does not keep customHeaders")
    assert TOKEN not in err
    assert run("subscribe", "--check")[0] == 2  # and --check agrees: nothing claimed success


# Generated: any starting state, in every mode, converges; foreign hooks are never touched.

HEADERS = st.sampled_from([{"X-Keytrail-Token": TOKEN}, {"X-Keytrail-Token": "stale"}, {}, {"x-other": "1"}])
OUR_HOOK = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["keytrail", "renamed"]),
        "url": st.sampled_from([OURS, OURS + "/"]),
        "topics": st.lists(st.sampled_from(DEFAULT_TOPICS), min_size=1, max_size=8, unique=True),
        "status": st.sampled_from(["live", "paused"]),
        "customHeaders": HEADERS,
    }
)
FOREIGN_URLS = ["https://crm.example/hooks", hook_url("http://127.0.0.1:9", "other"), "http://127.0.0.1:9/old"]
FOREIGN_HOOK = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["keytrail", "crm"]),
        "url": st.sampled_from(FOREIGN_URLS),
        "topics": st.lists(st.sampled_from(DEFAULT_TOPICS), min_size=1, max_size=3, unique=True),
        "status": st.sampled_from(["live", "paused"]),
        "customHeaders": HEADERS,
    }
)
PLACE = st.sampled_from([*PROJECTS, None])  # None: account-wide, only where the mode has them
STATE = st.tuples(
    st.lists(st.tuples(PLACE, OUR_HOOK), max_size=4), st.lists(st.tuples(PLACE, FOREIGN_HOOK), max_size=3)
)


@pytest.mark.parametrize("mode", list(MODES))
def test_generated_starting_states_converge_and_foreign_hooks_are_untouched(
    stack: ExitStack, tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: str
) -> None:
    fake = start(stack, **MODES[mode])
    run = cli(fake, tmp_path, capsys)
    wide = bool(MODES[mode].get("account_wide_hooks"))

    # The fixtures are shared by the examples on purpose: each example empties the fake's hooks, and Cli clears
    # the capture before every command.
    @settings(max_examples=5, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(STATE)
    def converge(state: tuple[list[Any], list[Any]]) -> None:
        ours, foreign = state
        fake.state.webhooks.clear()
        for place, fields in ours:
            if place is not None or wide:
                add_ours(fake, place, **fields)
        others = [add_ours(fake, place, **fields) for place, fields in foreign if place is not None or wide]

        code, _, err = run("subscribe", "--no-ping")

        assert code == 0, err
        assert run("subscribe", "--check")[0] == 0
        assert ours_by_project(fake) == {"proj-1": 1, "proj-2": 1}
        assert {h["id"]: h for h in others} == {
            h["id"]: h for h in fake.state.webhooks_in() if h["id"] in {o["id"] for o in others}
        }

    converge()
