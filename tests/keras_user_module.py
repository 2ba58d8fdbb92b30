"""A user's own module: a subclassed Keras classifier registered for saving, as a user writes it
(named to scripts/evaluate.py with --extra_modules=tests.keras_user_module)."""

import keras


@keras.saving.register_keras_serializable(package="users")
class SmallClassifier(keras.Model):
    """Images -> logits, written as a subclass (no symbolic inputs or outputs)."""

    def __init__(self, num_classes=10, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.conv = keras.layers.Conv2D(16, 3, strides=2, activation="relu")
        self.pool = keras.layers.Flatten()
        self.classifier = keras.layers.Dense(num_classes)

    def call(self, images):
        return self.classifier(self.pool(self.conv(images)))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}
