"""`swiftpipe eval`: scoring (exact match, per field, NER F1), reports, and the views over finished
runs: `leaderboard`, `compare`."""
