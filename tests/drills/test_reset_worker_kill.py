"""Drill: worker-high is SIGKILLed, children and all, while a password reset is being sent.

With Redis, the message of a task that a killed worker was running stays in the
broker's ``unacked`` hash until the visibility timeout: an hour here (twice the
longest hard time limit). The customer would get the reset link an hour late, long
after giving up. Payments have reconciliation, exports the watchdog; the request
row of a reset is the evidence that it is owed, and the beat entry
``password-reset-resend`` sends it again once its claim has expired.

Staged with an SMTP server that accepts connections and never greets: the task
claims the request and waits in the SMTP handshake, which is when the pool dies.
The kill and the stuck message are real; the minute the claim lease takes is not
waited out: the request's clock (created_at, claimed_at) is moved back by it.
"""

import email
import signal
import socket
from pathlib import Path

import pytest

from .conftest import wait_for

pytestmark = pytest.mark.drill

CLAIM_LEASE = 60  # users/tasks.py
SENT = "SELECT sent_at IS NOT NULL FROM users_passwordresetrequest WHERE id = %s"


def test_reset_held_by_a_killed_worker_is_sent_once_after_its_claim_expires(project, pools):
    with socket.create_server(("127.0.0.1", 0)) as silent_smtp:
        # Connections wait in the listen backlog: connected, never greeted.
        smtp = {
            "DJANGO_EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "DJANGO_EMAIL_HOST": "127.0.0.1",
            "DJANGO_EMAIL_PORT": str(silent_smtp.getsockname()[1]),
        }
        pools.signal("worker-high", signal.SIGTERM)
        pools.restart("worker-high", env=smtp)
        (reset,) = project.driver("resets", 1)["resets"]
        claimed = "SELECT claimed_at IS NOT NULL FROM users_passwordresetrequest WHERE id = %s"
        wait_for(lambda: project.scalar(claimed, [reset["request"]]), 30, "the task to claim the request")
        pools.signal("worker-high", signal.SIGKILL, whole_group=True)
    pools.restart("worker-high")  # the normal email backend again: files

    # The message is stuck in Redis's unacked hash for an hour. The resend entry
    # (beat, every minute; here as cron runs it) leaves the request alone while its
    # claim holds, and sends it once the claim has expired. Instead of waiting a
    # lease, the drill moves the request's clock back: its creation first (the claim
    # still holds), then its claim.
    resend = ("python", "manage.py", "scheduled", "run", "password-reset-resend")
    backdate = "UPDATE users_passwordresetrequest SET {0} = {0} - %s * interval '1 second' WHERE id = %s RETURNING id"
    project.sql(backdate.format("created_at"), [CLAIM_LEASE + 1, reset["request"]])
    assert "acted on []" in project.run(*resend), "sent again while the claim still held"
    project.sql(backdate.format("claimed_at"), [CLAIM_LEASE + 1, reset["request"]])
    assert f"acted on [{reset['request']}]" in project.run(*resend)
    wait_for(lambda: project.scalar(SENT, [reset["request"]]), 30, "the reset to be sent again")

    address = project.scalar("SELECT email FROM users_user WHERE id = %s", [reset["user"]])
    mail = Path(project.env["DJANGO_EMAIL_FILE_PATH"])
    received = [path for path in mail.glob("*") if email.message_from_bytes(path.read_bytes())["To"] == address]
    assert len(received) == 1
