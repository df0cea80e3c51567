// Plotly sizes a figure from its container when it is first drawn, which can happen before the page's columns are
// laid out (the figure then keeps a too-wide size and is clipped). Refit every figure once the page has loaded and
// whenever the window changes size; figures with a fixed width in their layout keep it.
(function () {
  function fit() {
    if (!window.Plotly) return;
    document.querySelectorAll('.plotly-graph-div').forEach(function (div) {
      if (div.layout && !div.layout.width) window.Plotly.Plots.resize(div);
    });
  }
  window.addEventListener('load', function () { fit(); setTimeout(fit, 300); });
  window.addEventListener('resize', fit);
})();
