"""Pure protocol readers: no asyncio, socket, time or logging imports."""
