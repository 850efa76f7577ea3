"""The bundled configs; `logocap_jax.configs` in an installed package (logocap_jax/resources.py).

Load them with `config_utils.load_config("<name>")`. Each file imports the config it extends
relatively, so it works as a file, from this folder and from the package.
"""
