import pytest
import torch



@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_run_data(tmp_path_factory):
    """A tiny Wan folder plus the datasets every training stage reads: latent LMDB (chunkwise 6 frames),
    ODE LMDBs in CausVid's 4-slot and Causal Forcing's 6-slot layouts, and a prompt file."""
    from causvid.data.lmdb import LatentLMDBWriter
    from causvid.tiny_wan import write_tiny_wan

    root = tmp_path_factory.mktemp("tiny_run")
    write_tiny_wan(root / "wan")
    gen = torch.Generator().manual_seed(0)
    for name, slots in (("latents", 1), ("ode4", 4), ("ode6", 6)):
        with LatentLMDBWriter(root / name) as writer:
            for i in range(6):
                writer.append(torch.randn(slots, 6, 16, 4, 4, generator=gen), f"a red square moving left {i}")
    (root / "prompts.txt").write_text("\n".join(f"a blue circle moving up {i}" for i in range(6)) + "\n")
    return root
