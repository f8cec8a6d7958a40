"""The demo kit: a Camber-like sandbox (`sandbox`), a sample app that uses Camber as a real
client would (`sample_app`), and the record-then-replay run of `replayproxy demo`
(`roundtrip`). None of it is needed to record or replay; it needs no cloud account."""
