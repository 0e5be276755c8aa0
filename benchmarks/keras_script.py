"""The plain Keras script a user would write instead of the job: the baseline of
`vs_script.py`.

`python benchmarks/keras_script.py IMAGES_DIR OUT.npy` embeds every image of the folder
with ResNet50 (random weights: the cost is the same as ImageNet's) and saves the
vectors. It prints the seconds spent in `predict` + `np.save`, the part that excludes
start-up (importing TensorFlow, building the model)."""

import sys
import time

import keras
import numpy as np
import tensorflow as tf
from keras.applications.resnet50 import ResNet50, preprocess_input


def main(images_dir: str, out_path: str) -> None:
    ds = keras.utils.image_dataset_from_directory(
        images_dir,
        labels=None,
        image_size=(224, 224),
        batch_size=32,
        shuffle=False,
        crop_to_aspect_ratio=True,
    )
    ds = ds.map(preprocess_input, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    model = ResNet50(include_top=False, pooling="avg", weights=None)
    start = time.monotonic()
    vectors = model.predict(ds, verbose=0)
    np.save(out_path, vectors)
    print(f"embedded {len(vectors)} in {time.monotonic() - start:.2f} s after start-up")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
