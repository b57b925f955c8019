"""Eager baseline: offline decode throughput of the PyTorch reference path on a
dummy TinyLlama-1.1B shape (prompt 128, 64 new tokens), batch 1 and 32."""
import time, torch
from helix import LLM, SamplingParams
for batch in (1, 32):
    llm = LLM("tinyllama-1.1b", load_format="dummy", num_kv_blocks=4096, max_model_len=2048)
    prompts = [[(7 * i + j) % 32000 for j in range(128)] for i in range(batch)]
    params = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)
    llm.generate(prompts, params, use_tqdm=False)
    torch.cuda.synchronize(); t = time.perf_counter()
    out = llm.generate(prompts, params, use_tqdm=False)
    torch.cuda.synchronize(); dt = time.perf_counter() - t
    print(f"eager torch-reference tinyllama-1.1b dummy bf16 batch={batch}: {batch*64/dt:.1f} output tok/s ({dt:.2f}s)")
    del llm; torch.cuda.empty_cache()
