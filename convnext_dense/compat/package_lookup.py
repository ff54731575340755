"""Package lookup without ``pkg_resources``.

For mmengine 0.10.x (checked on 0.10.7): ``mmengine.utils.package_utils.is_installed`` /
``get_installed_path`` / ``package2module`` (used when a config names a base as
``mmdet::...``) import ``pkg_resources``, which setuptools >= 82 no longer ships and older ones
deprecate (and rescan, slowly, on every call). :func:`apply` replaces them with
``importlib.metadata`` equivalents, and does nothing where mmengine no longer imports
``pkg_resources`` there.
"""
import importlib.metadata
import importlib.util
import inspect
import os.path as osp


def package_to_module(package: str) -> str:
    """Top-level module of an installed distribution (``mmcv-full`` -> ``mmcv``)."""
    dist = importlib.metadata.distribution(package)
    top_level = (dist.read_text('top_level.txt') or '').split()
    if top_level:
        return top_level[0]
    raise ValueError(f'can not infer the module name of {package}')


def is_installed(package: str) -> bool:
    """Whether ``package`` is an installed distribution or an importable module."""
    try:
        importlib.metadata.distribution(package)
        return True
    except importlib.metadata.PackageNotFoundError:
        spec = importlib.util.find_spec(package)
        return spec is not None and spec.origin is not None


def get_installed_path(package: str) -> str:
    """Directory of the installed package ``package`` (editable installs included)."""
    try:
        module = package_to_module(package)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        module = package
    spec = importlib.util.find_spec(module)
    if spec is None:
        raise importlib.metadata.PackageNotFoundError(package)
    if spec.origin is None:
        raise RuntimeError(f'{package} is a namespace package, which is invalid for '
                           f'`get_install_path`')
    return osp.dirname(spec.origin)


def _needed() -> bool:
    import mmengine.utils.package_utils as package_utils
    return 'pkg_resources' in inspect.getsource(package_utils)


def apply() -> None:
    """Replace mmengine's pkg_resources-based lookups (only where mmengine still uses them)."""
    if not _needed():
        return
    import mmengine.config.config as config_module
    import mmengine.hub.hub as hub_module
    import mmengine.utils as utils_module
    import mmengine.utils.package_utils as package_utils
    replacements = dict(is_installed=is_installed, get_installed_path=get_installed_path,
                        package2module=package_to_module)
    for module in (package_utils, utils_module, config_module, hub_module):
        for name, function in replacements.items():
            if hasattr(module, name):
                setattr(module, name, function)
