"""Every default in one place, each with the reason for its value."""

from typing import Final

# The embedded default keeps all its state under one directory of the working directory.
HOME = ".connector"
# Looked up in the working directory; CONNECTOR_CONFIG points elsewhere.
CONFIG_FILE = "connector.toml"

# Sixteen workers keep an API 20 ms away busy: against a sandbox with 20 ms of latency on a 2-core machine, 2,000
# jobs drained at 188 jobs/s with 8, 296 with 16, 334 with 32 and 311 with 48, past which the CPU, not the
# waiting, bounds it. Sixteen stay far under Dataverse's 52 concurrent requests per user, also with the claim,
# the lease renewer and the heartbeat beside them; a rate-limited API is held back by its brake, not by fewer
# workers.
WORKERS = 16
# A runner holds claimed jobs for its workers and half as many more, and claims when half its workers' worth of
# places is free: a worker that finishes starts the next job at once instead of waiting for the claim (on
# Dataverse a claim is two or three round trips), and each claim takes several jobs.
CLAIM_AHEAD_DIVISOR = 2
# A claim of a few hundred rows is one short transaction and keeps the pool fed between ticks.
BATCH_SIZE = 200
# Long enough for a slow attempt with its retries; renewed every third of it while a job runs.
LEASE_SECONDS = 60.0
# How often the scheduler looks for due jobs when running as a service.
TICK_SECONDS = 5.0

# Transient errors are retried until this long after the job's first try (since it was queued or last retried by
# hand): a day outlasts a platform outage of a working day or a night, and a job that still fails is failed by the
# next working day, while the CRM user still remembers why it was made. Counted from the first try, not from
# creation: a job queued while the connector was down, or waiting behind its record's earlier jobs, has its whole
# day left when it first runs.
MAX_AGE = 24 * 3600.0
# The first retry comes a second later: most faults (a reset, one 503) are over by then.
BACKOFF_INITIAL = 1.0
# The backoff doubles up to a quarter of an hour: through a long outage each waiting job asks four times an hour
# (2,000 waiting jobs make about 2 requests/s against an API that is coming back), and once it is back no job
# waits more than 15 minutes to notice.
BACKOFF_MAX = 900.0
BACKOFF_JITTER = 1.0
# Attempts are a second cap, behind the time budget: the backoff above fits about 106 attempts in 24 h (1, 2, 4 ...
# 512 s, then every 900 s), so with the defaults the day runs out first. The cap still ends a job whose waits a
# configuration shortened (a backoff_max of a few seconds) before it hammers the API all day.
MAX_ATTEMPTS = 200
# The most attempts a configuration may allow: beyond this, a job's attempt log is more than anyone can read.
MAX_ATTEMPTS_LIMIT = 10_000
# A Retry-After longer than ten minutes is capped: we would rather ask again than park a job for hours.
RETRY_AFTER_CAP = 600.0
# A 429 without a Retry-After pauses its API this long: long enough to let a burst pass, short enough that a 429
# at random (not a rate limit) costs every worker little.
DEFAULT_429_PAUSE = 1.0
# With `http.max_requests_per_second`, requests are spaced at 97 % of it: spaced at exactly the cap, the few
# milliseconds between our send and the API's clock put cap + 1 requests in one of its one-second windows now
# and then, and every such 429 stops every worker for its Retry-After.
CAP_SHARE = 0.97
# Without a cap, a 429 that comes after at least LEARN_FROM requests were answered in the second before it teaches
# the brake that rate as the API's limit: after the pause, requests are spaced at 97 % of it (they resume
# gradually, not in a burst of every worker at once, which met the next 429 at once), until a minute passes
# without a 429 that teaches a rate; then the brake forgets it, and the next 429 teaches it again (a raised or a
# lowered limit is found within a minute or so, at the cost of a few 429s). A 429 that comes while fewer than 95 %
# of the rate already learnt are answered is taken for one at random (an API's hiccup, not its limit), and
# teaches nothing.
LEARN_FROM = 5
LEARN_NEAR = 0.95
LEARNT_SHARE = 0.97
LEARNT_FORGET_AFTER = 60.0
# An API that says how much of its limit is left (Dataverse: x-ms-ratelimit-burst-remaining-xrm-requests and
# -time-remaining-) is met at full speed while a fifth or more is left, so that a short drain is not slowed at
# all; below that, requests are spaced so the rest lasts the API's window. A fifth of Dataverse's 6,000 is 1,200
# requests: far more than the workers can have in flight while the next answer brings a fresher count.
BUDGET_LOW = 0.2
# Dataverse's service protection limits count over a sliding window of five minutes, per user and web server.
DATAVERSE_LIMIT_WINDOW = 300.0
# Whether each part of a $batch counts toward Dataverse's 6,000 requests is not settled in public sources: the
# cautious reading is that it does, so the brake counts a batch of N parts as N requests unless told otherwise.
DATAVERSE_PACE_BY: Final = "parts"
# Mautic's batch edit (PATCH /api/contacts/batch/edit) changes tags through the same controller code as the contact
# edit call: on by default, it saves requests whenever jobs run at once, and a lone edit is the plain contact edit
# call all the same. Off for a Mautic without the route or with its batch limit lowered below 200.
MAUTIC_BATCH_TAG_EDITS = True
# Waits up to this long happen inside the attempt; longer ones put the job back to pending (shown as retrying).
INLINE_WAIT_MAX = 5.0

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0

# A PostgreSQL job store that does not give a connection within this long counts as down (a transient error): long
# enough for a server that is failing over, short enough that a runner says so within a tick or two.
POSTGRES_CONNECT_TIMEOUT = 10.0
# Connections a process keeps beside its workers: the claim, the lease renewer, the heartbeat and a reader.
POSTGRES_SPARE_CONNECTIONS = 4

# What a CRM user reads on the timeline; the job id lets support staff find the job behind a post.
TIMELINE_TEMPLATE = "{summary} (job {job_id})"

# Sandbox-only credentials: they open nothing but the loopback emulators.
SANDBOX_CONSUMER_KEY = "sandbox-consumer-key"
SANDBOX_CONSUMER_SECRET = "sandbox-consumer-secret"
SANDBOX_MAUTIC_USER = "sandbox"
SANDBOX_MAUTIC_PASSWORD = "sandbox-password"

# How often the outcome of a job is offered to a job store that does not answer, before the lease takes over.
STORE_WRITE_TRIES = 4
# A job store that does not answer a claim (Dataverse 5xx, a dropped connection) is asked again after these
# pauses, in seconds, before a drain gives up; running jobs go on meanwhile.
CLAIM_RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0)
# How often a Dataverse write under a lease is repeated after a 412 while the row is still ours (a user editing
# the job form meanwhile), and a person's retry or cancel after a concurrent change.
DATAVERSE_WRITE_TRIES = 4
# A read for a person is tried this often on a transient error (a flaky network, a sandbox with faults), with a
# short pause between tries: long enough to ride out a blip, short enough that a person keeps waiting.
VIEW_TRIES = 5
VIEW_PAUSE = 0.2

# Webhooks a trigger sends: a receiver that takes longer than this is treated as not answering (retried).
WEBHOOK_TIMEOUT = 10.0
# Sandbox-only: signs the webhooks of the demo, whose receiver runs on loopback.
SANDBOX_WEBHOOK_SECRET = "sandbox-webhook-secret"

# The web console (`connector console`): loopback, so nothing is reachable from another machine until someone
# chooses an address and sets a password or a token. The port is the event endpoint's plus one.
CONSOLE_HOST = "127.0.0.1"
CONSOLE_PORT = 8781
# The login a console password goes with, when the settings name none.
CONSOLE_USERNAME = "operator"
# /healthz counts a runner alive when it beat within this many seconds: twelve ticks at the default 5 s, so a
# busy store or a slow tick is not an alarm, and a runner that died is one within a minute.
HEARTBEAT_MAX_AGE = 60.0
# Jobs per page of the console's job list, as `jobs list` shows by default.
CONSOLE_PAGE = 100
