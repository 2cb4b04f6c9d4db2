"""The only place provider HTTP is spoken: OpenAI-compatible, Anthropic, and the fake.

base.py (keys, deadlines, safe error text), http.py (the pooled httpx exchange and SSE),
openai.py, anthropic.py, fake.py (in process), fake_script.py (the fake's grammar),
fake_wire.py + fake_server.py (the bundled fake provider server), registry.py (clients of a
config). They implement ports.ProviderClient and are wired in by app.
"""
