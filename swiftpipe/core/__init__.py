"""Infrastructure every command stands on: the console, errors, JSON lines and atomic files, child
processes and their guard, the run lock, environment facts, command lines, statistics, vLLM servers."""
