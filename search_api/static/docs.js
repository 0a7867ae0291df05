// Starts Swagger UI on /docs (no inline script: the page's policy allows only files of this server).
const script = document.currentScript;
window.ui = SwaggerUIBundle({
  url: script.dataset.openapi,
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  validatorUrl: null,  // the default sends the spec's address to validator.swagger.io
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
});
