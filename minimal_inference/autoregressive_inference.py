"""CausVid's autoregressive inference: a causal few-step model streams each prompt into output_{i:03d}.mp4.

    python minimal_inference/autoregressive_inference.py --config_path configs/wan_causal_dmd.yaml \
        --checkpoint_folder autoregressive_checkpoint --output_folder outputs --prompt_file_path prompts.txt
"""
import sys

from causvid.pipelines.cli import prompt_file_main, run


def main(argv=None) -> int:
    return run(lambda a: prompt_file_main(a, causal=True, description=__doc__.split("\n")[0]), argv)


if __name__ == "__main__":
    sys.exit(main())
