"""Scale-out on NATS JetStream (SPEC §13): collectors publish, store daemons write, serve daemons answer.

`schema.py` and `market_schema.py` (subjects, payloads: the wire contract of docs/NATS.md), `link.py` (the
nats-py connection on its own asyncio thread), `collect.py` (trades and books → JetStream), `market.py`
(tickers, derivatives, liquidations → JetStream from collectors, candles from serve daemons), `store.py`
(JetStream → database), `serve.py` (JetStream → the live views of a serving daemon).
"""
