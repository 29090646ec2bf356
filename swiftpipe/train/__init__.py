"""`swiftpipe run` and `render` (the stages: tiny model, sft, export, eval, report), `tiny-model`,
`download`, and the commands that run many or rerun: `sweep`, `reproduce`."""
