// Shows the text a VRPSR node returns in {"ui": {"text": [...]}} (achieved bpp/kbps, export path) on the node
// itself, in a read-only box that is not saved with the workflow.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const WIDGET = "vrpsr_report";

app.registerExtension({
  name: "VRPSR.Report",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.name.startsWith("VRPSR") || !nodeData.output_node) {
      return;
    }
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = message?.text;
      if (!text) {
        return;
      }
      let widget = this.widgets?.find((w) => w.name === WIDGET);
      if (!widget) {
        widget = ComfyWidgets.STRING(this, WIDGET, ["STRING", { multiline: true }], app).widget;
        widget.inputEl.readOnly = true;
        widget.serialize = false;
      }
      widget.value = text.join("\n");
      this.setSize(this.computeSize());
    };
  },
});
