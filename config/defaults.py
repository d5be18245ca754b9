"""Every default in one place, each with the reason for its value."""

# The embedded default keeps all its state under one directory of the working directory.
HOME = ".connector"
# Looked up in the working directory; CONNECTOR_CONFIG points elsewhere.
CONFIG_FILE = "connector.toml"

# Eight workers keep a rate-limited API busy without tripping its concurrency limits (Dataverse allows 52).
WORKERS = 8
# A claim of a few hundred rows is one short transaction and keeps the pool fed between ticks.
BATCH_SIZE = 200
# Long enough for a slow attempt with its retries; renewed every third of it while a job runs.
LEASE_SECONDS = 60.0
# How often the scheduler looks for due jobs when running as a service.
TICK_SECONDS = 5.0

# Five attempts over a few minutes ride out a deploy or a throttling burst; then a person should look.
MAX_ATTEMPTS = 5
BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 300.0
BACKOFF_JITTER = 1.0
# A Retry-After longer than ten minutes is capped: we would rather ask again than park a job for hours.
RETRY_AFTER_CAP = 600.0
# Waits up to this long happen inside the attempt; longer ones put the job back to pending (shown as retrying).
INLINE_WAIT_MAX = 5.0

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0

# What a CRM user reads on the timeline; the job id lets support staff find the job behind a post.
TIMELINE_TEMPLATE = "{summary} (job {job_id})"

# Sandbox-only credentials: they open nothing but the loopback emulators.
SANDBOX_CONSUMER_KEY = "sandbox-consumer-key"
SANDBOX_CONSUMER_SECRET = "sandbox-consumer-secret"
SANDBOX_MAUTIC_USER = "sandbox"
SANDBOX_MAUTIC_PASSWORD = "sandbox-password"
