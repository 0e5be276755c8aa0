"""Flex Template entry point (FLEX_TEMPLATE_PYTHON_PY_FILE in the Dockerfile).

The launcher VM runs this file inside the job's image with the template's parameters as
flags and it submits the job exactly as `embed-stream` does. The workers must run the
same image (`sdk_container_image`): it holds TensorFlow and this package, which the
default Beam worker image lacks, so a launch without it stops here with one line.
"""

import sys

from apache_beam.options.pipeline_options import PipelineOptions, WorkerOptions


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    image = PipelineOptions(argv).view_as(WorkerOptions).sdk_container_image
    if not image:
        print(
            "embed-stream template: error: pass --parameters sdk_container_image=IMAGE "
            "(the image this template was built from; the workers run it)",
            file=sys.stderr,
        )
        return 2
    from streaming.main import main as embed_stream  # after the check: it is heavier

    return embed_stream(argv)


if __name__ == "__main__":
    sys.exit(main())
