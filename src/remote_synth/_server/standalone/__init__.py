"""Scripts run by path in the vLLM server's interpreter: standard library only, nothing of ours."""
