"""A department system's side of the NATS contract: log in, send commands, read one outcome for each.

Usage:
    baton nats-creds issue --department HOUSING > housing.json
    python examples/department_system.py housing.json WHISTLE_ID

Publishes report_in (h-1), complete (h-2), then report_in h-1 again, and prints what arrives on the
department's durable consumer: its outcomes and its inbox (whistle events that concern it).
"""

import asyncio
import json
import sys
from pathlib import Path

import nats


async def main(creds_file: str, whistle_id: str) -> None:
    creds = json.loads(Path(creds_file).read_text())
    code = creds["user"].removeprefix("dept-")
    # "servers" lists every node of a NATS cluster; the client moves to another if its server dies.
    nc = await nats.connect(
        creds["servers"], user=creds["user"], password=creds["password"], inbox_prefix=creds["inbox_prefix"]
    )
    for command_id, action, fields in [
        ("h-1", "report_in", {}),
        ("h-2", "complete", {"summary": "done"}),
        ("h-1", "report_in", {}),
    ]:
        body = {"command_id": command_id, "whistle_id": whistle_id, **fields}
        await nc.jetstream().publish(f"baton.dept.{code}.cmd.{action}", json.dumps(body).encode())
    # Baton's JetStream API is reached through the department's own account, under js_api_prefix.
    js = nc.jetstream(prefix=creds["js_api_prefix"])
    sub = await js.pull_subscribe_bind(durable=creds["consumer"]["durable"], stream=creds["consumer"]["stream"])
    awaited = {"h-1", "h-2"}
    deadline = asyncio.get_running_loop().time() + 90
    # Wait for one outcome per command (a cluster may be electing a leader), then drain what else is queued.
    while asyncio.get_running_loop().time() < deadline:
        try:
            msgs = await sub.fetch(10, timeout=2)
        except TimeoutError:
            if not awaited:
                break
            continue
        for msg in msgs:
            print(msg.subject, msg.data.decode())
            if msg.subject.endswith(".outcome"):
                awaited.discard(json.loads(msg.data)["command_id"])
            await msg.ack()
    await nc.close()
    if awaited:
        sys.exit(f"no outcome for {sorted(awaited)} within 90 s")


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:3]))
