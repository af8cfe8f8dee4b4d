"""A department system's side of the NATS contract: send commands, read one outcome for each.

Usage: python examples/department_system.py NATS_URL WHISTLE_ID CODE
Publishes report_in (h-1), complete (h-2), then report_in h-1 again, and prints the outcomes.
"""

import asyncio
import json
import sys

import nats


async def main(url: str, whistle_id: str, code: str) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    outcomes = await nc.subscribe(f"baton.dept.{code}.outcome")
    for command_id, action, fields in [
        ("h-1", "report_in", {}),
        ("h-2", "complete", {"summary": "done"}),
        ("h-1", "report_in", {}),
    ]:
        body = {"command_id": command_id, "whistle_id": whistle_id, **fields}
        await js.publish(f"baton.dept.{code}.cmd.{action}", json.dumps(body).encode())
    try:
        while True:
            print((await outcomes.next_msg(timeout=2)).data.decode())
    except nats.errors.TimeoutError:
        pass
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
