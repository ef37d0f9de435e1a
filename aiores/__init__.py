"""aiores: asyncio-native orchestration of compute (placeholder, filled in below)."""
