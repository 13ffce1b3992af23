from remote_synth.nss import DEFAULT_INSTRUCTION, build_prompt

TINYLLAMA = "[INST] {instruction} {schema} [/INST]{prefill}"
SMOLLM3 = "user\n {instruction} {schema} <|im_end|> \n assistant\n{prefill}"


def test_prompts_are_byte_identical_to_nss() -> None:
    assert build_prompt(["a", "b"], TINYLLAMA) == (
        '[INST] Generate a JSONL dataset with the following columns:  "a":<unk>,"b":<unk> [/INST]'
    )
    assert build_prompt(["a", "b"], SMOLLM3) == (
        'user\n Generate a JSONL dataset with the following columns:  "a":<unk>,"b":<unk> <|im_end|> \n assistant\n'
    )


def test_column_names_are_not_escaped_and_order_is_kept() -> None:
    assert '"q"x":<unk>,"a":<unk>' in build_prompt(['q"x', "a"], TINYLLAMA)


def test_exclusions_and_prefill() -> None:
    prompt = build_prompt(["a", "__nss_sequence_id"], TINYLLAMA, prefill="{", exclude_columns=["__nss_sequence_id"])
    assert prompt.endswith('"a":<unk> [/INST]{')
    assert DEFAULT_INSTRUCTION.endswith(": ")
