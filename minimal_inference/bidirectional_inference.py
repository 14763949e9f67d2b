"""CausVid's bidirectional inference: the whole clip at once with full attention (a bidirectional DMD
student in few steps, or the Wan teacher in many), each prompt into output_{i:03d}.mp4.

    python minimal_inference/bidirectional_inference.py \
        --config_path configs/wan_bidirectional_dmd_from_scratch.yaml \
        --checkpoint_folder bidirectional_checkpoint --output_folder outputs --prompt_file_path prompts.txt
"""
import sys

from causvid.pipelines.cli import prompt_file_main, run


def main(argv=None) -> int:
    return run(lambda a: prompt_file_main(a, causal=False, description=__doc__.split("\n")[0]), argv)


if __name__ == "__main__":
    sys.exit(main())
