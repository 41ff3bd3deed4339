"""Builds the custom runtime's C kernels on install (here, in CI and on a board).

The extension is optional: if no compiler is available the agent still installs and the
custom runtime falls back to its numpy kernels, saying so in `describe()`. OpenMP is used
when the compiler supports it.
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildWithOptionalOpenMP(build_ext):
    def build_extension(self, ext):
        base_compile, base_link = list(ext.extra_compile_args), list(ext.extra_link_args)
        for compile_args, link_args in ((["-fopenmp"], ["-fopenmp"]), ([], [])):
            ext.extra_compile_args = base_compile + compile_args
            ext.extra_link_args = base_link + link_args
            try:
                return super().build_extension(ext)
            except Exception as exc:  # no OpenMP here: build without it
                if not compile_args:
                    raise
                print(f"building {ext.name} without OpenMP ({exc})")


setup(
    ext_modules=[
        Extension(
            "biagent.kernels._xnor",
            # module.c is the Python glue; the other three are plain C kernels with a header each
            sources=[
                f"agent/biagent/kernels/{name}.c"
                for name in ("module", "xnor_gemm", "bconv", "fpops", "graph")
            ],
            depends=[f"agent/biagent/kernels/{name}.h" for name in ("xnor_gemm", "bconv", "fpops", "graph")],
            libraries=["m"],
            extra_compile_args=["-O3", "-std=c11", "-ffp-contract=off"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": BuildWithOptionalOpenMP},
)
