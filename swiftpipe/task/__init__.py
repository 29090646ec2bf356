"""What one extraction is, wherever it happens: the messages, the reading and checking of answers
(flags), the one OpenAI client, and the reference tasks' fixed texts."""
