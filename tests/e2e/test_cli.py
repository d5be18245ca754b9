"""The `connector` command as a user runs it: its output and its exit code (see `helpers` for in which process)."""

from __future__ import annotations

import getpass
import json
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from connector.sandbox.mautic import MauticSandbox
from connector.sandbox.spotler import SpotlerSandbox
from jobs.app import SANDBOX_MAUTIC_CONTACT_FIELD, sandbox_path
from tests.e2e.helpers import connector, connector_process, demo_hints, in_background

SECRET = "s3cr3t-consumer-value-91c"


@pytest.fixture(params=["spotler", "mautic"])
def platform_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The user-path tests run once per platform, each on its sandbox."""
    return {"CONNECTOR_PLATFORM": str(request.param)}


# The demo's counts: every operation; Start Automation is a Spotler operation, NOT_SUPPORTED on Mautic.
DEMO_COUNTS = {"spotler": "16 succeeded, 1 failed", "mautic": "15 succeeded, 2 failed"}


def timeline_of(stdout: str, record: str) -> list[str]:
    """The timeline lines the demo prints under one record."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{record}: "))
    posts = []
    for line in lines[start + 1:]:
        if not line.startswith("    "):
            break
        posts.append(line)
    return posts



def test_demo_shows_jobs_tags_scores_and_timeline_and_runs_twice(tmp_path: Path, platform_env: dict[str, str]) -> None:
    platform = platform_env["CONNECTOR_PLATFORM"]
    first = connector_process("demo", cwd=tmp_path, env=platform_env)  # one demo through a real process
    assert f"Sandbox mode: no URL is configured for {platform}, so its emulator runs on loopback" in first.stderr
    assert f"{platform} on http://127.0.0.1:" in first.stderr
    assert DEMO_COUNTS[platform] in first.stdout
    assert "INVALID_INPUT: Score is -5; Increase Score needs a number greater than 0." in first.stdout
    c1001 = "contact C-1001: Newsletter=0, Nutrition Interest=3, Product news=0, Prospect=0, Webinar 2026=12"
    assert c1001 in first.stdout
    assert "Increased score Webinar 2026 by 10 (job " in first.stdout
    assert "lead L-2001: Lead score=25" in first.stdout
    assert ("Started automation welcome (job " in first.stdout) == (platform == "spotler")
    # The careless job's input did not validate: the listing keeps its shape, and shows the input as given.
    careless = next(j for j in json.loads(connector("jobs", "list", "--json", cwd=tmp_path).stdout)
                    if j["result_code"] == "INVALID_INPUT")
    assert (careless["tags"], careless["score"]) == (["Lead score"], -5)
    assert careless["input"]["score"] == "-5"
    # The gym: three events make C-1001 a Prospect, with its actions; a shop's events make C-1002 a hot lead.
    assert "Events: 8 read: 6 queued, 1 seen before, 0 already scored once, 1 with no rule" in first.stdout
    assert "Nutrition prospect fired for contact:C-1001: Nutrition Interest 2 -> 3" in first.stdout
    assert "Hot lead fired for contact:C-1002: Hot lead 16 -> 116" in first.stdout
    assert "Task for the owner of contact C-1001: 'Call about the nutrition plan', due " in first.stdout
    assert "contact C-1001's status in the CRM: Prospect" in first.stdout
    assert ("Nutrition Interest=3" in first.stdout) and ("Hot lead=116" in first.stdout)
    assert ("Started automation prospect-general-nurture (job " in first.stdout) == (platform == "spotler")
    assert "E-mail to sales@gym.example: 'contact C-1001 is a nutrition prospect' (job " in first.stdout
    assert "Webhook received on loopback, signature verified: trigger 'Hot lead', Hot lead = 116 (job " in first.stdout
    (mail,) = json.loads(connector("mail", "list", "--json", cwd=tmp_path).stdout)
    assert (mail["to"], mail["subject"]) == (["sales@gym.example"], "contact C-1001 is a nutrition prospect")
    assert "sales@gym.example" in connector("mail", "list", cwd=tmp_path).stdout
    second = connector("demo", cwd=tmp_path, env=platform_env)
    assert "Webinar 2026=24" in second.stdout  # the platform's state persists between runs
    # The same events delivered again score nothing and fire nothing.
    assert "Events: 8 read: 0 queued, 6 seen before, 1 already scored once, 1 with no rule" in second.stdout
    assert "Nutrition Interest=3" in second.stdout and "Hot lead=116" in second.stdout
    assert (tmp_path / ".connector" / "sandbox" / f"{platform}.db").is_file()
    # The timeline shows the posts of this run's jobs, and all of them; not those of the first run.
    this_run = set(re.findall(r"^([0-9a-f]{12}) ", second.stdout, re.MULTILINE))
    posts = timeline_of(second.stdout, "contact C-1001")
    assert len(posts) == (6 if platform == "spotler" else 5), second.stdout
    assert {re.findall(r"\(job ([0-9a-f]+)\)", post)[0] for post in posts} <= this_run
    # The closing hints work as printed.
    for env, args in demo_hints(second.stdout):
        connector(*args, cwd=tmp_path, env={**platform_env, **env})


def test_demo_through_injected_faults_still_ends_with_every_job_final(
    tmp_path: Path, platform_env: dict[str, str]
) -> None:
    # A Mautic try is up to five requests: at these rates about one in three gets through, hence the budget.
    env = {**platform_env, "CONNECTOR_RETRY__MAX_ATTEMPTS": "40", "CONNECTOR_RETRY__BACKOFF_INITIAL": "0.05",
           "CONNECTOR_RETRY__BACKOFF_MAX": "0.2", "CONNECTOR_RETRY__JITTER": "0.05"}
    result = connector("demo", "--error-rate", "0.15", "--reset-rate", "0.05", "--drop-rate", "0.1",
                       "--latency-ms", "1", "--jitter-ms", "2", "--seed", "7", cwd=tmp_path, env=env)
    assert DEMO_COUNTS[platform_env["CONNECTOR_PLATFORM"]] in result.stdout
    assert "Faults injected by the " in result.stdout
    c1001 = "contact C-1001: Newsletter=0, Nutrition Interest=3, Product news=0, Prospect=0, Webinar 2026=12"
    assert c1001 in result.stdout


def test_a_user_adds_jobs_runs_them_and_reads_the_contact(tmp_path: Path, platform_env: dict[str, str]) -> None:
    added = connector("jobs", "add", "--operation", "Add Tag", "--contact", "C-7", "--tag", "VIP; Webinar",
                      "--json", cwd=tmp_path)
    job = json.loads(added.stdout)
    assert job["status"] == "pending"
    connector("jobs", "add", "-o", "increase_score", "--contact", "C-7", "-t", "Lead", "--score", "12", cwd=tmp_path)
    run = connector("run", "--once", cwd=tmp_path, env=platform_env)
    assert "2 succeeded, 0 failed" in run.stdout
    view = json.loads(connector("contact", "show", "C-7", "--json", cwd=tmp_path, env=platform_env).stdout)
    assert view["platform"] == platform_env["CONNECTOR_PLATFORM"]
    assert view["tags"] == {"Lead": 12, "VIP": 0, "Webinar": 0}
    # The two jobs are on different tags, so they run side by side: their posts come in either order.
    posts = {post["job_id"]: post["text"] for post in view["timeline"]}
    assert posts[job["id"]] == f"Added tag VIP, Webinar (job {job['id']})" and len(posts) == 2
    listed = json.loads(connector("jobs", "list", "--json", cwd=tmp_path).stdout)
    assert {"id", "operation", "status", "result_code", "message", "attempts"} <= set(listed[0])
    assert [j["status"] for j in listed] == ["succeeded", "succeeded"]
    assert listed[1]["attempts"] == 1
    shown = json.loads(connector("jobs", "show", job["id"], "--json", cwd=tmp_path).stdout)
    assert shown["attempt_log"][0]["outcome"] == "succeeded"
    assert shown["attempt_log"][0]["result_code"] == "OK"


def test_invalid_input_is_refused_with_a_sentence_and_exit_2(tmp_path: Path) -> None:
    refused = connector("jobs", "add", "-o", "Decrease Score", "--lead", "L-1", "-t", "Lead", "--score", "-3",
                        cwd=tmp_path, check=2)
    assert refused.stderr.strip() == (
        "Error: Score is -3; Decrease Score needs a number greater than 0. "
        "Decrease Score already lowers the score: give 3, not -3."
    )
    unknown = connector("jobs", "add", "-o", "Tag it", "--contact", "C-1", "-t", "x", cwd=tmp_path, check=2)
    assert "Operation is 'Tag it'; it must be one of Add Tag (add_tag)" in unknown.stderr
    assert json.loads(connector("jobs", "list", "--json", cwd=tmp_path).stdout) == []


def test_import_is_all_or_nothing_and_reports_every_bad_line(tmp_path: Path) -> None:
    csv = tmp_path / "jobs.csv"
    csv.write_text(
        "operation,contact,tags,score\n"
        "Add Tag,C-1,Webinar,\n"
        "Increase Score,C-1,Lead,abc\n"
        "Set Score,C-2,Lead,10\n"
        "Remove Tag,,VIP,\n",
        encoding="utf-8",
    )
    refused = connector("jobs", "import", str(csv), cwd=tmp_path, check=2)
    assert "line 3: Score is 'abc'; it must be a whole number" in refused.stderr
    assert "line 5: Remove Tag needs a contact, lead or account" in refused.stderr
    assert "2 of 4 rows are invalid; nothing was queued." in refused.stderr
    assert json.loads(connector("jobs", "list", "--json", cwd=tmp_path).stdout) == []
    partial = connector("jobs", "import", str(csv), "--skip-invalid", cwd=tmp_path)
    assert "Queued 2 jobs" in partial.stdout
    one = tmp_path / "one.csv"
    one.write_text("operation,contact,tags\nAdd Tag,C-1,Webinar\n", encoding="utf-8")
    assert f"Queued 1 job from {one} as batch " in connector("jobs", "import", str(one), cwd=tmp_path).stdout
    jsonl = tmp_path / "jobs.jsonl"
    jsonl.write_text('{"operation": "add_tag", "tags": "Fair"}\n{"operation": "set_score", "lead": "L-1", '
                     '"tags": "Lead", "score": -2}\n', encoding="utf-8")
    assert "Queued 2 jobs" in connector("jobs", "import", str(jsonl), cwd=tmp_path).stdout
    assert len(json.loads(connector("jobs", "list", "--json", cwd=tmp_path).stdout)) == 5


def test_cancel_and_retry_refuse_jobs_in_the_wrong_status(tmp_path: Path) -> None:
    done = json.loads(connector("jobs", "add", "-o", "add_tag", "--contact", "C-1", "-t", "VIP", "--json",
                                cwd=tmp_path).stdout)
    pending = json.loads(connector("jobs", "add", "-o", "add_tag", "--contact", "C-2", "-t", "y", "--json",
                                   cwd=tmp_path).stdout)
    cancelled = connector("jobs", "cancel", pending["id"], cwd=tmp_path)
    assert f"Job {pending['id']}: Cancelled before it ran." in cancelled.stdout
    shown = json.loads(connector("jobs", "show", pending["id"], "--json", cwd=tmp_path).stdout)
    assert [(a["action"], a["via"]) for a in shown["actions"]] == [("cancel", "cli")]
    again = connector("jobs", "cancel", pending["id"], cwd=tmp_path, check=2)
    assert "only pending jobs can be cancelled" in again.stderr
    connector("run", "--once", cwd=tmp_path)
    assert "only failed jobs can be retried" in connector("jobs", "retry", done["id"], cwd=tmp_path, check=2).stderr
    missing = connector("jobs", "show", "nope", cwd=tmp_path, check=1)
    assert missing.stderr.strip() == "Error: No job with id 'nope'."


def test_a_job_failing_under_run_once_exits_1(tmp_path: Path) -> None:
    connector("jobs", "add", "-o", "add_tag", "--contact", "C-1", "-t", "VIP", cwd=tmp_path)
    # A platform URL where nothing listens: every attempt fails to connect.
    env = {"CONNECTOR_SPOTLER__BASE_URL": "http://127.0.0.1:9/integrationservice-1.1.0",
           "CONNECTOR_RETRY__MAX_ATTEMPTS": "1"}
    result = connector("run", "--once", cwd=tmp_path, env=env, check=1)
    assert "0 succeeded, 1 failed" in result.stdout
    assert "Error: 1 job failed;" in result.stderr
    failed = json.loads(connector("jobs", "list", "--status", "Failed", "--json", cwd=tmp_path).stdout)
    assert failed[0]["result_code"] == "NETWORK_ERROR"  # a status as the CRM spells it is found too
    retried = connector("jobs", "retry", "--failed", cwd=tmp_path)
    assert f"Queued again: 1 job: {failed[0]['id']}." in retried.stdout
    assert "1 succeeded, 0 failed" in connector("run", "--once", cwd=tmp_path).stdout
    # `attempts` is the retry budget used since the manual retry; the attempt log has every try.
    shown = json.loads(connector("jobs", "show", failed[0]["id"], "--json", cwd=tmp_path).stdout)
    assert (shown["attempts"], shown["attempts_total"], len(shown["attempt_log"])) == (1, 2, 2)
    human = [line.strip() for line in connector("jobs", "show", failed[0]["id"], cwd=tmp_path).stdout.splitlines()]
    assert "attempts (since last retry): 1" in human
    assert "attempts in all: 2" in human
    assert "tags: VIP" in human
    assert "attempts_total" not in json.loads(connector("jobs", "list", "--json", cwd=tmp_path).stdout)[0]
    # Who retried it, and from where, is on the job.
    who = getpass.getuser()
    assert [(a["action"], a["who"], a["via"]) for a in shown["actions"]] == [("retry", who, "cli")]
    assert human[human.index("actions:") + 1].endswith(f"retry by {who} (cli)")


def test_secrets_never_appear_in_output_logs_or_attempts(tmp_path: Path) -> None:
    env = {"CONNECTOR_SPOTLER__CONSUMER_SECRET": SECRET, "CONNECTOR_LOG_LEVEL": "DEBUG"}
    outputs = [
        connector("demo", cwd=tmp_path, env=env),
        connector("config", "show", cwd=tmp_path, env=env),
        connector("config", "show", "--json", cwd=tmp_path, env=env),
        connector("jobs", "list", "--json", cwd=tmp_path, env=env),
    ]
    connector("jobs", "add", "-o", "add_tag", "--contact", "C-9", "-t", "VIP", cwd=tmp_path, env=env)
    outputs.append(connector("run", "--once", cwd=tmp_path, env=env))
    for result in outputs:
        assert SECRET not in result.stdout
        assert SECRET not in result.stderr
    shown = json.loads(outputs[2].stdout)
    assert shown["spotler"]["consumer_secret"] == "**********"
    for path in (tmp_path / ".connector").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_a_secret_in_connector_toml_is_refused(tmp_path: Path) -> None:
    (tmp_path / "connector.toml").write_text('[spotler]\nconsumer_secret = "oops"\n', encoding="utf-8")
    result = connector("config", "show", cwd=tmp_path, check=2)
    assert "secrets are not read from connector.toml" in result.stderr
    assert "CONNECTOR_SPOTLER__CONSUMER_SECRET" in result.stderr
    assert "oops" not in result.stderr


def test_precedence_flags_over_environment_over_toml(tmp_path: Path) -> None:
    (tmp_path / "connector.toml").write_text('[runner]\nworkers = 3\ntick_seconds = 9\n', encoding="utf-8")
    shown = json.loads(connector("config", "show", "--json", cwd=tmp_path,
                                 env={"CONNECTOR_RUNNER__TICK_SECONDS": "2"}).stdout)
    assert (shown["runner"]["workers"], shown["runner"]["tick_seconds"]) == (3, 2.0)
    home = json.loads(connector("--home", "elsewhere", "config", "show", "--json", cwd=tmp_path,
                                env={"CONNECTOR_HOME": "env-home"}).stdout)
    assert home["home"] == "elsewhere"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_run_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    connector("jobs", "add", "-o", "add_tag", "--contact", "C-1", "-t", "VIP", cwd=tmp_path)
    with in_background("run", cwd=tmp_path, env={"CONNECTOR_RUNNER__TICK_SECONDS": "0.2"}) as running:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            listed = json.loads(connector("jobs", "list", "--json", cwd=tmp_path).stdout)
            if listed[0]["status"] == "succeeded":
                break
            time.sleep(0.2)
    assert running.process.returncode == 0, running.stderr
    assert "Stopped." in running.stderr
    assert "1 succeeded, 0 failed" in running.stdout


def test_start_automation_runs_on_spotler_and_is_not_supported_on_mautic(tmp_path: Path) -> None:
    # The embedded Spotler sandbox knows the trigger "welcome".
    connector("jobs", "add", "-o", "Start Automation", "--contact", "C-1", "-t", "welcome", cwd=tmp_path)
    assert "1 succeeded, 0 failed" in connector("run", "--once", cwd=tmp_path).stdout
    connector("jobs", "add", "-o", "start_automation", "--contact", "C-1", "-t", "welcome", cwd=tmp_path)
    refused = connector("run", "--once", cwd=tmp_path, env={"CONNECTOR_PLATFORM": "mautic"}, check=1)
    assert "0 succeeded, 1 failed" in refused.stdout
    failed = json.loads(connector("jobs", "list", "--status", "failed", "--json", cwd=tmp_path).stdout)
    assert failed[0]["result_code"] == "NOT_SUPPORTED"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sandbox_serve_prints_urls_a_runner_can_use_and_stops_on_sigterm(tmp_path: Path) -> None:
    with in_background("sandbox", "serve", "--latency-ms", "1", cwd=tmp_path) as serving:
        urls = serving.lines(3)
        assert set(urls) == {"spotler", "mautic", "dataverse"}
        connector("jobs", "add", "-o", "set_score", "--contact", "C-5", "-t", "Lead", "--score", "4", cwd=tmp_path)
        served = {"CONNECTOR_SPOTLER__BASE_URL": urls["spotler"]}
        run = connector("run", "--once", cwd=tmp_path, env=served)
        assert "1 succeeded, 0 failed" in run.stdout
        assert "Sandbox mode" not in run.stderr
        connector("jobs", "add", "-o", "add_tag", "--contact", "C-5", "-t", "VIP", cwd=tmp_path)
        mautic = {"CONNECTOR_PLATFORM": "mautic", "CONNECTOR_MAUTIC__BASE_URL": urls["mautic"],
                  "CONNECTOR_MAUTIC__CONTACT_FIELD": "crm_id"}
        assert "1 succeeded, 0 failed" in connector("run", "--once", cwd=tmp_path, env=mautic).stdout
    assert serving.process.returncode == 0, serving.stderr
    assert "Stopped." in serving.stderr


def test_a_misspelled_setting_or_a_missing_secrets_file_is_refused_with_exit_2(tmp_path: Path) -> None:
    refused = connector("config", "show", cwd=tmp_path, env={"CONNECTOR_RUNNER__WORKERZ": "4"}, check=2)
    assert refused.stderr.startswith("Error: The configuration is not valid: runner.workerz: no such setting")
    (tmp_path / "connector.toml").write_text('[dataverse.jobs]\nentity_sett = "x"\n', encoding="utf-8")
    assert "dataverse.jobs.entity_sett: no such setting" in connector("jobs", "list", cwd=tmp_path, check=2).stderr
    (tmp_path / "connector.toml").unlink()
    missing = connector("config", "show", cwd=tmp_path, env={"CONNECTOR_SECRETS_FILE": "nope.env"}, check=2)
    assert missing.stderr.strip() == "Error: CONNECTOR_SECRETS_FILE names 'nope.env', which is not a file."


def test_help_shows_flags_without_a_value_type_and_the_version_is_printed(tmp_path: Path) -> None:
    # The root help and the version through real processes (what a user tries first); the rest in this one.
    root = connector_process("--help", cwd=tmp_path, env={"COLUMNS": "250"}).stdout
    shown = root + "".join(connector(*command, "--help", cwd=tmp_path).stdout
                           for command in [["run"], ["jobs", "list"], ["jobs", "import"], ["jobs", "retry"]])
    assert "<bool>" not in shown
    for flag in ("--json", "--once", "--failed", "--skip-invalid", "--help", "--version"):
        assert flag in shown
    assert "--no-skip-invalid" not in shown
    usage = connector("jobs", "import", "--help", cwd=tmp_path).stdout
    assert "connector jobs import [OPTIONS] {FILE}" in usage
    assert "{file}" not in usage
    home = next(line for line in root.splitlines() if "--home" in line)
    assert "Data directory of the embedded default: .connector unless CONNECTOR_HOME says otherwise." in home
    assert not re.search(r" \.(?!\w)", home)  # no full stop after a space (a lost [env: ...] once)
    version = connector_process("--version", cwd=tmp_path).stdout.strip()
    assert re.fullmatch(r"connector \d+\.\d+\.\d+\S*", version), version
    # The console script pyproject.toml declares (`connector = "jobs.cli:main"`), as installed next to Python.
    script = subprocess.run([Path(sys.executable).with_name("connector"), "--version"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert (script.returncode, script.stdout.strip()) == (0, version)


def test_jobs_list_says_when_it_stops_at_the_limit_and_refuses_a_limit_below_1(tmp_path: Path) -> None:
    for contact in ("C-1", "C-2", "C-3"):
        connector("jobs", "add", "-o", "add_tag", "--contact", contact, "-t", "VIP", cwd=tmp_path)
    cut = connector("jobs", "list", "--limit", "2", cwd=tmp_path)
    assert cut.stderr.strip() == "Showing the newest 2 jobs; use --limit to see more."
    assert connector("jobs", "list", "--limit", "4", cwd=tmp_path).stderr == ""
    assert connector("jobs", "list", "--limit", "2", "--json", cwd=tmp_path).stderr == ""
    for bad in ("0", "-1"):
        assert "--limit" in connector("jobs", "list", "--limit", bad, cwd=tmp_path, check=2).stderr


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sandbox_serve_port_puts_the_three_sandboxes_on_consecutive_ports(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a free port, and (very likely) the two after it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    port = min(port, 65000)
    with in_background("sandbox", "serve", "--port", str(port), cwd=tmp_path) as serving:
        urls = serving.lines(3)
    assert urls["spotler"].startswith(f"http://127.0.0.1:{port}/")
    assert urls["mautic"] == f"http://127.0.0.1:{port + 1}"
    assert urls["dataverse"].startswith(f"https://127.0.0.1:{port + 2}/")
    assert serving.process.returncode == 0


@pytest.mark.parametrize(("args", "fixed"), [
    (["jobs", "list", "--home", "other place"], "connector --home 'other place' jobs list"),
    (["jobs", "list", "--limit", "3", "--log-level=DEBUG"], "connector --log-level=DEBUG jobs list --limit 3"),
])
def test_a_root_option_after_the_sub_command_is_explained_with_the_command_that_works(
    tmp_path: Path, args: list[str], fixed: str
) -> None:
    refused = connector(*args, cwd=tmp_path, check=2)
    name = "--home" if "--home" in args else "--log-level"
    assert refused.stderr == f"Error: {name} is an option of `connector` itself, so it goes before the " \
                             f"sub-command: {fixed}\n"
    assert not (tmp_path / "other place").exists()


def test_contact_show_of_a_mistyped_id_creates_nothing_on_the_platform(tmp_path: Path) -> None:
    shown = connector("contact", "show", "C-TYPO", cwd=tmp_path)
    assert "no tags" in shown.stdout
    sandbox = SpotlerSandbox(tmp_path / ".connector" / "sandbox" / "spotler.db", consumer_key="k", consumer_secret="s")
    assert sandbox.scores("C-TYPO") == {}
    assert not sandbox.contact_exists("C-TYPO")  # a later job still creates it, as a CRM sync would have
    connector("jobs", "add", "-o", "add_tag", "-t", "VIP", "--contact", "C-TYPO", cwd=tmp_path)
    connector("run", "--once", cwd=tmp_path)
    assert sandbox.contact_exists("C-TYPO")


def test_log_lines_and_job_times_are_both_in_utc(tmp_path: Path) -> None:
    queued = json.loads(connector("jobs", "add", "-o", "add_tag", "-t", "VIP", "--contact", "C-1", "--json",
                                  cwd=tmp_path).stdout)
    ran = connector("--log-level", "INFO", "run", "--once", cwd=tmp_path)
    logged = re.search(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z INFO jobs\.executor: job (\w+) succeeded$",
                       ran.stderr, re.M)
    assert logged and logged.group(2) == queued["id"], ran.stderr
    # The job's times (JSON, and `jobs list`) are in the same zone: the log line comes a moment after creation.
    created = queued["created_at"]
    assert created.endswith("Z") and 0 <= (datetime.fromisoformat(logged.group(1) + "+00:00")
                                           - datetime.fromisoformat(created)).total_seconds() < 60
    assert f"{created[:16].replace('T', ' ')}Z" in connector("jobs", "list", cwd=tmp_path).stdout


def test_contact_show_on_mautic_of_a_mistyped_id_creates_nothing_a_person_would_see(tmp_path: Path) -> None:
    mautic = {"CONNECTOR_PLATFORM": "mautic"}
    assert "no tags" in connector("contact", "show", "C-TYPO", cwd=tmp_path, env=mautic).stdout
    sandbox = MauticSandbox(sandbox_path(tmp_path / ".connector", "mautic"), username="u", password="p",
                            contact_field=SANDBOX_MAUTIC_CONTACT_FIELD)
    assert sandbox.contact_id("C-TYPO") is None
    connector("jobs", "add", "-o", "add_tag", "-t", "VIP", "--contact", "C-TYPO", cwd=tmp_path)
    connector("run", "--once", cwd=tmp_path, env=mautic)
    assert sandbox.contact_id("C-TYPO") is not None  # a job still creates it, as a CRM sync would have
